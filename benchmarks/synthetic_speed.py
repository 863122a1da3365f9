"""Synthetic-world throughput: samples generated per second in memory, and written to disk.

python -m benchmarks.synthetic_speed [--num 300] [--sizes 128:64 256:128 512:256]
"""

import argparse
import functools
import tempfile
import time
from pathlib import Path

from mosaic_studio.mosaic.data.semalign import save_sample
from mosaic_studio.world.synthetic import WorldConfig, generate_sample


def _rate(num: int, work) -> float:
    start = time.perf_counter()
    for index in range(num):
        work(index)
    return num / (time.perf_counter() - start)


def _in_memory(index: int, config: WorldConfig) -> None:
    generate_sample(1, index, "train", config)


def _to_disk(index: int, config: WorldConfig, folder: Path) -> None:
    save_sample(generate_sample(2, index, "train", config), folder / f"s{index}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=300, help="samples per measurement")
    parser.add_argument(
        "--sizes", nargs="+", default=["128:64", "256:128", "512:256"], help="TARGET:REF pixel sizes to measure"
    )
    args = parser.parse_args()
    for spec in args.sizes:
        target_size, ref_size = (int(v) for v in spec.split(":"))
        config = WorldConfig(target_size=target_size, ref_size=ref_size)
        generate_sample(0, 0, "train", config)  # warm imports
        # Fresh seeds per measurement, so identity construction is included, not cached.
        in_memory = _rate(args.num, functools.partial(_in_memory, config=config))
        with tempfile.TemporaryDirectory() as tmp:
            to_disk = _rate(args.num, functools.partial(_to_disk, config=config, folder=Path(tmp)))
        print(
            f"target {target_size:4d} px, refs {ref_size:4d} px: "
            f"{in_memory:7.1f} samples/s in memory, {to_disk:7.1f} samples/s written to disk"
        )


if __name__ == "__main__":
    main()
