"""python -m mosaic_studio.train --config mosaic_studio/train/configs/<stage>.yaml [section.key=value ...]

Runs (or resumes) one training stage; see mosaic_studio/train/config.py for every key and README for the
FLUX.1-dev command.
"""

import argparse
import sys

from mosaic_studio.train.config import load_config
from mosaic_studio.train.trainer import NonFiniteLoss, train


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mosaic_studio.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="YAML file with any of the config sections")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. optim.max_steps=100")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
    except ValueError as error:
        parser.error(str(error))
    try:
        print(f"exported: {train(config)}")
    except NonFiniteLoss as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
