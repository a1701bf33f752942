"""`python -m reamo.tuning --config CONFIG [--stage N] [--resume]` (also what `accelerate launch -m` starts)."""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reamo.tuning", description="Run one Reamo tuning stage.")
    parser.add_argument("--config", required=True, help="training YAML, e.g. tuning/configs/stage1_uie.yaml")
    parser.add_argument("--stage", type=int, choices=(1, 2, 3, 4), help="override the config's stage")
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from reamo.errors import ConfigError
    from reamo.tuning.trainer import train_from_yaml

    try:
        final = train_from_yaml(args.config, stage=args.stage, resume=args.resume)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(final)
    return 0


if __name__ == "__main__":
    sys.exit(main())
