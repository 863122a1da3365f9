"""CLI: build a tiny FLUX-architecture pipeline with random, seeded weights (untrained).

    python -m mosaic_studio.mosaic.build_tiny --out runs/tiny-random --seed 0

This is the random starting point of tests and of the default's training, not the embedded
default itself: that one is trained (`python -m mosaic_studio.train.build_default`). A folder
that already holds a model is refused unless `--force` is given.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mosaic_studio.mosaic.tiny import BUILD_INFO, TinyFluxConfig, build_tiny_pipeline, dir_size


def existing_model(out: Path) -> str | None:
    """What `out` holds, in words, when replacing it would lose something; None when it is free."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return None
    info_path = out / BUILD_INFO
    if info_path.is_file():
        builder = json.loads(info_path.read_text(encoding="utf-8")).get("builder", "an unknown builder")
        trained = "trained " if "build_default" in builder else ""
        return f"a {trained}model built by {builder}"
    return "a model or other files" if out.is_dir() else "a file"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory (replaced atomically)")
    parser.add_argument("--seed", type=int, default=0, help="weight seed; same seed, same weights")
    parser.add_argument("--force", action="store_true", help="replace a folder that already holds a model")
    args = parser.parse_args(argv)
    held = existing_model(Path(args.out))
    if held and not args.force:
        parser.error(
            f"{args.out} already holds {held}; it would be replaced by random weights. "
            "Choose another --out, or pass --force to replace it."
        )
    out = build_tiny_pipeline(args.out, TinyFluxConfig(), args.seed)
    print(f"wrote {out}: {dir_size(out) / 2**20:.2f} MiB of random (untrained) weights")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
