"""Click-to-heatmap latency of the Attention tab, through the served app's API (gradio_client):

    python benchmarks/heatmap_latency.py            # embedded default, 3 references, 15 clicks

The app is launched on 127.0.0.1 with the given pipeline; one generation records attention,
then each click asks /heatmap for a reference point, round trip through Gradio's queue: first
over every recorded step, then over a range of step bins (steps 3–6, docs/DESIGN.md §8). Prints
the median and 90th percentile over the clicks of each (the first click, a warm-up, is
excluded). The target of the Attention tab is 300 ms on the embedded default.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from gradio_client import Client, handle_file

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.mosaic.loading import load_pipeline
from mosaic_studio.studio.app import build_demo
from mosaic_studio.studio.examples import load_examples
from mosaic_studio.studio.local_server import launched

PROMPT = "a blue person, a brown quadruped and a yellow bird on a plain background"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--clicks", type=int, default=15)
    parser.add_argument("--side", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()

    references = max(load_examples(), key=lambda e: len(e.references)).references[:3]
    with tempfile.TemporaryDirectory() as folder:
        demo = build_demo(
            load_pipeline(args.model, device="cpu"), store=Path(folder) / "store.db", outputs_dir=Path(folder) / "out"
        )
        with launched(demo) as url:
            client = Client(url, verbose=False, httpx_kwargs={"timeout": 600})
            client.predict(
                [handle_file(f) for f in references],
                PROMPT,
                "",
                args.side,
                args.side,
                args.steps,
                3.5,
                7,
                False,
                1,
                False,
                1,
                100,
                api_name="/generate",
            )
            # step bins (first, last), 0-based: () leaves them out, i.e. every recorded step
            for label, bins in (("every step", ()), ("steps 3–6", (2, 5))):
                report(label, clicks(client, args.clicks, bins))


def clicks(client, count: int, bins: tuple) -> list[float]:
    """Seconds per /heatmap round trip, `count` clicks after one warm-up."""
    times = []
    for i in range(count + 1):
        started = time.perf_counter()
        # reference 2, pixel (x, 40), image 1, blocks 0-3 (the double blocks), colour map, opacity, step bins
        client.predict(2, 5 + (7 * i) % 50, 40, 1, 0, 3, "viridis", 0.5, *bins, api_name="/heatmap")
        times.append(time.perf_counter() - started)
    return times[1:]


def report(label: str, times: list[float]) -> None:
    times = sorted(times)
    p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
    print(
        f"click → heatmap, {label}, over {len(times)} clicks: median {statistics.median(times) * 1000:.0f} ms, "
        f"90th percentile {p90 * 1000:.0f} ms (target 300 ms)"
    )


if __name__ == "__main__":
    main()
