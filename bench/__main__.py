"""``python -m bench [--quick] [--scenario NAME] [--out DIR]``."""

import sys

from .runner import main

sys.exit(main())
