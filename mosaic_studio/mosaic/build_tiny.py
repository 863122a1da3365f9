"""CLI: build the tiny FLUX-architecture default pipeline (random, seeded weights).

    python -m mosaic_studio.mosaic.build_tiny --out mosaic_studio/assets/tiny-flux --seed 0
"""

from __future__ import annotations

import argparse

from mosaic_studio.mosaic.tiny import TinyFluxConfig, build_tiny_pipeline, dir_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="mosaic_studio/assets/tiny-flux", help="output directory (replaced atomically)")
    parser.add_argument("--seed", type=int, default=0, help="weight seed; same seed, same weights")
    args = parser.parse_args(argv)
    out = build_tiny_pipeline(args.out, TinyFluxConfig(), args.seed)
    print(f"wrote {out}: {dir_size(out) / 2**20:.2f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
