"""Entry point of ``python -m framework``."""

import sys

from framework.cli import main

sys.exit(main())
