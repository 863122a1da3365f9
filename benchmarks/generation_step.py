"""Cost of one denoising step versus the number of references K = 0 … 6.

One MOSAIC transformer forward (no gradients, no CFG) on a FLUX-architecture transformer with
random weights; reference grids equal the target grid (the official 512×512 / 512 setting).
Reported as seconds per step and the ratio to K = 0, all measured in this one run.

  python benchmarks/generation_step.py                     # CPU-sized model (~1–2 min on 2 cores)
  python benchmarks/generation_step.py --preset flux-dev --device cuda --dtype bfloat16
      # FLUX.1-dev shape: 19 double + 38 single blocks, hidden 3072, 32×32 tokens = 512×512 px;
      # also prints peak GPU memory
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch
from building import built_on  # a sibling script: benchmarks/ is on sys.path when run
from diffusers import FluxTransformer2DModel

from mosaic_studio.mosaic.attention import install_mosaic_processors
from mosaic_studio.mosaic.transformer import grid_position_ids, mosaic_forward, reference_position_ids

PRESETS = {
    "cpu": dict(
        num_layers=3,
        num_single_layers=3,
        attention_head_dim=32,
        num_attention_heads=4,
        joint_attention_dim=64,
        pooled_projection_dim=32,
        axes_dims_rope=(8, 12, 12),
    ),
    "flux-dev": dict(
        num_layers=19,
        num_single_layers=38,
        attention_head_dim=128,
        num_attention_heads=24,
        joint_attention_dim=4096,
        pooled_projection_dim=768,
        axes_dims_rope=(16, 56, 56),
        guidance_embeds=True,
    ),
}


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=PRESETS, default="cpu")
    parser.add_argument("--grid", type=int, default=32, help="token grid side of target and references")
    parser.add_argument("--text", type=int, default=64, help="text tokens (FLUX.1-dev uses 512)")
    parser.add_argument("--max-refs", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()

    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    config = PRESETS[args.preset]
    with built_on(args.device, dtype):
        model = FluxTransformer2DModel(patch_size=1, in_channels=64, **config).eval()
    install_mosaic_processors(model)
    n = args.grid**2
    kw = dict(device=args.device, dtype=dtype)
    x = torch.randn(1, n, 64, **kw)
    text = torch.randn(1, args.text, config["joint_attention_dim"], **kw)
    pooled = torch.randn(1, config["pooled_projection_dim"], **kw)
    t = torch.full((1,), 0.5, **kw)
    guidance = torch.full((1,), 3.5, **kw) if config.get("guidance_embeds") else None
    img_ids, txt_ids = grid_position_ids(args.grid, args.grid, **kw), torch.zeros(args.text, 3, **kw)

    rows = []
    for k in range(args.max_refs + 1):
        reference_latents = torch.randn(1, k, n, 64, **kw) if k else None
        reference_ids = reference_position_ids(k, args.grid, args.grid, **kw) if k else None
        step = functools.partial(  # binds this iteration's references
            mosaic_forward,
            model,
            x,
            encoder_hidden_states=text,
            pooled_projections=pooled,
            timestep=t,
            img_ids=img_ids,
            txt_ids=txt_ids,
            guidance=guidance,
            reference_latents=reference_latents,
            reference_ids=reference_ids,
        )
        with torch.no_grad():
            step()  # warm-up
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(args.repeats):
                sync(args.device)
                start = time.perf_counter()
                step()
                sync(args.device)
                times.append(time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else float("nan")
        rows.append((k, statistics.median(times), peak))

    base = rows[0][1]
    print(
        f"\nGeneration step, preset {args.preset}, {n} target tokens, K × {n} reference tokens, "
        f"{args.text} text tokens, "
        f"{args.dtype} on {torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'} "
        f"(median of {args.repeats})\n"
    )
    print("| K | s/step | vs K=0 | peak GPU GiB |")
    print("|---|---|---|---|")
    for k, seconds, peak in rows:
        memory = "–" if peak != peak else f"{peak:.1f}"  # NaN on the CPU
        print(f"| {k} | {seconds:.3f} | {seconds / base:.2f} | {memory} |")


if __name__ == "__main__":
    main()
