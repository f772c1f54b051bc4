"""Allow ``python -m daemon``."""

import sys

from daemon.cli.entry import main

sys.exit(main())
