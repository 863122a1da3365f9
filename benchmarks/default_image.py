"""Wall time of one whole image from the embedded default at its native settings (the ones it
records for itself: size, reference size, steps, guidance), with 1–3 held-out references, in
exact and fast (`reference_cache=True`) mode.

A newcomer's call, timed end to end: reference preprocessing, prompt encoding, every denoising
step and the VAE decode, as `pipe(prompt, reference_images=refs)` does it. Each figure is the
best of `--repeats` calls (other work on a shared machine only ever adds time); every setting is
measured in this one run, interleaved, after one warm-up call each.

  python benchmarks/default_image.py                      # all cores (torch's default threads)
  python benchmarks/default_image.py --model path/to/model --refs 3 --repeats 5
"""

from __future__ import annotations

import argparse
import time

import torch
from PIL import Image

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.evaluation.report import shown_path
from mosaic_studio.mosaic.loading import load_pipeline
from mosaic_studio.world.synthetic import WorldConfig, generate_sample

TARGET_SECONDS = 2.0  # the goal for 3 references at native settings on a 2-core CPU


def heldout_scene(pipe, subjects: int):
    """A held-out scene of the synthetic world with `subjects` subjects, at the model's sizes."""
    native = pipe.native_settings
    world = WorldConfig(
        target_size=native.height,
        ref_size=native.reference_size,
        token_size=pipe.pixels_per_token,
        min_subjects=subjects,
        max_subjects=subjects,
    )
    sample = generate_sample(0, subjects, "heldout", world)
    return sample.caption, [Image.fromarray(r.image) for r in sample.references]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--refs", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    native = pipe.native_settings
    settings = [(k, fast) for k in args.refs for fast in (False, True)]
    scenes = {k: heldout_scene(pipe, k) for k in args.refs}

    def call(k: int, fast: bool) -> float:
        caption, refs = scenes[k]
        began = time.perf_counter()
        pipe(caption, reference_images=refs, reference_cache=fast, generator=torch.Generator().manual_seed(0))
        return time.perf_counter() - began

    for setting in settings:  # warm-up: first-call allocations and lazy imports
        call(*setting)
    best = {setting: float("inf") for setting in settings}
    for _ in range(args.repeats):
        for setting in settings:
            best[setting] = min(best[setting], call(*setting))

    print(
        f"{shown_path(args.model)}: {native.width}×{native.height} px, references {native.reference_size} px, "
        f"{native.num_inference_steps} steps, guidance {native.guidance_scale}; "
        f"{torch.get_num_threads()} threads; best of {args.repeats}"
    )
    print("| references | exact (s) | fast (s) |\n|---|---|---|")
    for k in args.refs:
        print(f"| {k} | {best[(k, False)]:.2f} | {best[(k, True)]:.2f} |")
    if 3 in args.refs:
        verdict = "meets" if best[(3, False)] <= TARGET_SECONDS else "misses"
        print(f"3 references, exact mode: {best[(3, False)]:.2f} s, {verdict} the {TARGET_SECONDS:.0f} s goal")


if __name__ == "__main__":
    main()
