"""``python -m fanout_ingest`` = ``fanout-ingest``."""

import sys

from fanout_ingest import cli

sys.exit(cli.main())
