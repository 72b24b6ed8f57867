"""`python -m device` runs the command-line interface."""

import sys

from device.cli import main

sys.exit(main())
