"""`python -m daemon.emulator`: run the emulator as its own process."""

import sys

from daemon.emulator import main

sys.exit(main())
