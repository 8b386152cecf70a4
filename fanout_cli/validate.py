"""``fanout validate FILE``: check a FanoutConsumer manifest exactly as ``fanout-worker`` loads it.

Exit 0 with one line naming the consumer; exit 2 with one line per problem, each naming the
field (the same report ``fanout-worker --config`` prints), so CI can gate a manifest before
``kubectl apply``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fanout_core import spec as spec_model

EXIT_CONFIG = 2


class Validate:
    """The ``validate`` command."""

    help = "check a FanoutConsumer manifest"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("file")

    def run(self, args: argparse.Namespace, rest: Sequence[str]) -> int:
        path: str = args.file
        try:
            consumer = spec_model.load_manifest(path)
        except spec_model.ConfigError as error:
            print("\n".join(spec_model.config_error_lines("fanout validate", path, error)), file=sys.stderr)
            return EXIT_CONFIG
        print(f"{path}: valid FanoutConsumer {consumer.metadata.name!r}")
        return 0


COMMAND = Validate()
