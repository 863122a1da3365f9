"""Fast mode (`reference_cache=True`, docs/DESIGN.md §7) against exact mode: one denoising step
for K = 0 … 6 references, both modes side by side in one run.

Exact mode runs every stream at every step. Fast mode runs the references once, at its first
step (they attend only to themselves and their keys and values are cached), and text + target
only afterwards, attending to the cached keys. Reported: seconds per step, each mode's later
steps against K = 0 (where both modes are the same computation), and fast mode's first step.
One transformer forward per step (no CFG, which doubles both modes alike). Rounds are
interleaved over K and mode; each figure is the fastest step over all rounds (the minimum: on a
shared machine other work only ever adds time). On the CPU the clock is the process's CPU time
(`time.process_time`; run single-threaded), which other jobs on the machine do not inflate; on
a GPU it is wall time between synchronisations.

  python benchmarks/reference_cache.py
      # the embedded default (MosaicPipeline.from_pretrained + its LoRA) at its app settings:
      # 256 px target and references, 128 T5 tokens
  python benchmarks/reference_cache.py --preset flux-proportioned
      # random FLUX-shaped transformer, hidden 768 (6 × 128 heads), with a quarter of
      # FLUX.1-dev's 512 px token counts: keys per hidden width, hence the attention share of
      # the step, are those of FLUX.1-dev at 512 px, at a cost a CPU can run
  python benchmarks/reference_cache.py --preset flux-dev --device cuda --dtype bfloat16
      # FLUX.1-dev's shape (19 + 38 blocks, hidden 3072, 32 × 32 tokens, 512 T5 tokens)
  python benchmarks/reference_cache.py --preset flux-dev --blocks 1 1 --refs 0 6 --steps 1 --rounds 1
      # FLUX.1-dev's width and token counts with 1 + 1 blocks, on a CPU: each block costs the
      # same at any depth, so the per-step ratios are those of the full model on this hardware
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch
from building import built_on  # a sibling script: benchmarks/ is on sys.path when run
from diffusers import FluxTransformer2DModel

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.mosaic.attention import ReferenceCache, install_mosaic_processors
from mosaic_studio.mosaic.transformer import grid_position_ids, mosaic_forward, reference_position_ids

FLUX_SHAPE = dict(patch_size=1, in_channels=64, attention_head_dim=128, axes_dims_rope=(16, 56, 56))
RANDOM_PRESETS = {
    # (transformer config, target/reference grid side in tokens, text tokens)
    "flux-proportioned": (
        dict(FLUX_SHAPE, num_layers=2, num_single_layers=4, num_attention_heads=6, joint_attention_dim=512),
        16,
        128,
    ),
    "flux-dev": (
        dict(
            FLUX_SHAPE,
            num_layers=19,
            num_single_layers=38,
            num_attention_heads=24,
            joint_attention_dim=4096,
            pooled_projection_dim=768,
            guidance_embeds=True,
        ),
        32,
        512,
    ),
}


@dataclass
class Setup:
    transformer: FluxTransformer2DModel
    grid: int  # target and reference grid side, in tokens
    text: int  # T5 tokens
    description: str


def embedded_default(device: str, dtype: torch.dtype) -> Setup:
    """The shipped default with its LoRA, at the app's settings (default_settings)."""
    from mosaic_studio.mosaic.pipeline import MosaicPipeline, default_settings
    from mosaic_studio.mosaic.validation import max_sequence_limit

    pipe = MosaicPipeline.from_pretrained(str(DEFAULT_MODEL_DIR), dtype=dtype)
    if not getattr(pipe.transformer, "peft_config", None):
        pipe.load_mosaic_lora(str(DEFAULT_MODEL_DIR))
    pipe.to(device)
    side = default_settings(pipe)["side"]
    grid = side // pipe.pixels_per_token
    reference = pipe.default_reference_size(side, side) // pipe.pixels_per_token
    if reference != grid:
        raise RuntimeError(f"expected references on the target's grid, got {reference} vs {grid}")
    return Setup(pipe.transformer.eval(), grid, max_sequence_limit(pipe), f"embedded default, {side} px")


def random_transformer(preset: str, device: str, dtype: torch.dtype, blocks=None, seed: int = 0) -> Setup:
    config, grid, text = RANDOM_PRESETS[preset]
    if blocks:  # depth override: (double, single)
        config = dict(config, num_layers=blocks[0], num_single_layers=blocks[1])
    torch.manual_seed(seed)
    with built_on(device, dtype):
        model = FluxTransformer2DModel(**config).eval()
    install_mosaic_processors(model)
    hidden = config["num_attention_heads"] * config["attention_head_dim"]
    blocks = f"{config['num_layers']} + {config['num_single_layers']} blocks"
    return Setup(model, grid, text, f"random {preset}, hidden {hidden}, {blocks}")


class StepInputs:
    """Random inputs of the shapes one generation step would have (timing needs no content)."""

    def __init__(self, setup: Setup, device: str, dtype: torch.dtype, max_refs: int, seed: int = 0):
        config = setup.transformer.config
        g = torch.Generator().manual_seed(seed)
        n = setup.grid**2
        kw = dict(device=device, dtype=dtype)

        def randn(*shape):
            return torch.randn(*shape, generator=g).to(**kw)

        self.common = dict(
            encoder_hidden_states=randn(1, setup.text, config.joint_attention_dim),
            pooled_projections=randn(1, config.pooled_projection_dim),
            img_ids=grid_position_ids(setup.grid, setup.grid, **kw),
            txt_ids=torch.zeros(setup.text, 3, **kw),
            guidance=torch.full((1,), 3.5, **kw) if config.guidance_embeds else None,
        )
        self.target = randn(1, n, config.in_channels)
        self.references = randn(1, max_refs, n, config.in_channels)
        self.grid, self.kw = setup.grid, kw

    def call(self, num_refs: int, step: int) -> dict:
        refs = self.references[:, :num_refs] if num_refs else None
        ids = reference_position_ids(num_refs, self.grid, self.grid, **self.kw) if num_refs else None
        t = torch.full((1,), 1.0 - 0.05 * step, **self.kw)  # a new timestep at every step
        return dict(self.common, hidden_states=self.target, timestep=t, reference_latents=refs, reference_ids=ids)


def timed(fn, device: str) -> float:
    if not device.startswith("cuda"):
        start = time.process_time()  # CPU seconds of this process: a busy machine's other jobs do not count
        fn()
        return time.process_time() - start
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


@torch.no_grad()
def measure(model, inputs: StepInputs, num_refs: int, fast: bool, steps: int, device: str) -> tuple[float, float]:
    """(first step, fastest later step) in seconds, for one simulated generation."""
    cache = ReferenceCache() if fast else None
    times = [
        timed(lambda i=i: mosaic_forward(model, **inputs.call(num_refs, i), reference_cache=cache), device)
        for i in range(steps + 1)
    ]
    return times[0], min(times[1:])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["default", *RANDOM_PRESETS], default="default")
    parser.add_argument("--refs", type=int, nargs="+", default=list(range(7)), help="the K values to time")
    parser.add_argument("--blocks", type=int, nargs=2, metavar=("DOUBLE", "SINGLE"), help="random presets' depth")
    parser.add_argument("--steps", type=int, default=4, help="later steps timed per generation")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the fastest step is kept")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    dtype = getattr(torch, args.dtype)
    if args.preset == "default":
        setup = embedded_default(args.device, dtype)
    else:
        setup = random_transformer(args.preset, args.device, dtype, blocks=args.blocks)
    if 0 not in args.refs:
        parser.error("--refs must include 0, the baseline")
    inputs = StepInputs(setup, args.device, dtype, max(args.refs))
    warm = min([k for k in args.refs if k] or [0])  # the cheapest run through the reference code
    measure(setup.transformer, inputs, warm, True, 1, args.device)  # warm-up

    results: dict[tuple[int, bool], list[tuple[float, float]]] = {}
    for _ in range(args.rounds):
        for k in args.refs:
            for fast in (False, True) if k else (False,):  # K = 0: both modes are the same computation
                results.setdefault((k, fast), []).append(
                    measure(setup.transformer, inputs, k, fast, args.steps, args.device)
                )
    best = {key: tuple(min(times) for times in zip(*rounds)) for key, rounds in results.items()}
    report(setup, args, best)


def report(setup: Setup, args, best: dict) -> None:
    n = setup.grid**2
    cuda = args.device.startswith("cuda")
    where = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} thread(s), CPU time)"
    print(
        f"\nReference cache, {setup.description}: {n} target tokens, K × {n} reference tokens, {setup.text} text "
        f"tokens, {args.dtype} on {where}; fastest of {args.rounds} rounds × {args.steps} later steps\n"
    )
    base = best[(0, False)][1]
    print("| K | exact s/step | exact vs K=0 | fast first step s | fast s/step (later) | fast vs K=0 | exact / fast |")
    print("|---|---|---|---|---|---|---|")
    for k in args.refs:
        exact = best[(k, False)][1]
        first, fast = best[(k, True)] if k else (exact, exact)
        print(
            f"| {k} | {exact:.3f} | {exact / base:.2f} | {first:.3f} | {fast:.3f} | **{fast / base:.2f}** | "
            f"{exact / fast:.2f} |"
        )


if __name__ == "__main__":
    main()
