"""python -m mosaic_studio.train --config mosaic_studio/train/configs/<stage>.yaml [section.key=value ...]

Runs (or resumes) one training stage; see mosaic_studio/train/config.py for every key and README for the
FLUX.1-dev command.
"""

import argparse
import sys

from accelerate import PartialState

from mosaic_studio.train.config import ConfigError, load_config
from mosaic_studio.train.trainer import NonFiniteLoss, train


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mosaic_studio.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="YAML file with any of the config sections")
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume even though the config differs from the run's config.json (run.allow_config_change=true)",
    )
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. optim.max_steps=100")
    args = parser.parse_args(argv)
    overrides = [*args.overrides, *(["run.allow_config_change=true"] if args.allow_config_change else [])]
    try:
        config = load_config(args.config, overrides)
    except (ValueError, OSError) as error:  # a bad value or key, an unreadable --config file
        parser.error(str(error))
    try:
        exported = train(config)
        if PartialState().is_main_process:  # under `accelerate launch` every process returns here
            print(f"exported: {exported}")
    except ConfigError as error:  # refused against the model or the run being resumed, before writing
        parser.error(str(error))
    except NonFiniteLoss as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
