"""``python -m bridge``: the ``taskcast`` command, for environments without the script on PATH."""

from .cli import main

main()
