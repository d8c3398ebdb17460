"""`reward-engine serve` with every model step held SLOW_STEP_S seconds, for the tests of
behaviour under load (overload, timeouts, disconnects, draining) that need requests to
stay in flight for a predictable time. Same arguments as `reward-engine serve`."""

from __future__ import annotations

import sys
import time

from engine.cli import build_parser, setup_logging
from engine.server.app import load_engine
from engine.server.cli import config_from_args, serve

SLOW_STEP_S = 0.05  # must match server_testing.SLOW_STEP_S


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(["serve", *argv])
    setup_logging("info")
    config = config_from_args(args)
    engine = load_engine(config)
    runner = engine.engine.runner
    execute = runner.execute

    def slow_execute(chunks):
        time.sleep(SLOW_STEP_S)
        return execute(chunks)

    runner.execute = slow_execute
    return serve(config, engine)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
