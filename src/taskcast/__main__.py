"""``python -m taskcast``: the ``taskcast`` command, for environments without the script on PATH."""

from taskcast.cli import main

main()
