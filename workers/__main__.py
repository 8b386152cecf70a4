"""``python -m workers`` is ``fanout-worker``."""

import sys

from workers import cli

sys.exit(cli.main())
