"""``python -m fanout_cli`` is ``fanout``."""

import sys

from fanout_cli import main

sys.exit(main.main())
