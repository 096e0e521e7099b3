"""``python -m emu.cli``."""

import sys

from emu.cli.main import main

sys.exit(main())
