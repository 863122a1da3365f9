"""Training-step cost of the MOSAIC losses (SCAL + MDL) versus diffusion loss alone.

Stage-2 step (reference LoRA trainable, base frozen) on a FLUX-architecture transformer with
K references, P points per reference. Variants, each in its own process so peak memory is its own:

  off        L_diff only
  on         L_diff + α·SCAL + β·MDL, probe on the paper's early double blocks (Table 10)
  on_all     the same, probe on every double block (the authors' released setting)
  naive_all  like on_all, but the probe builds the full (K·N_ref × N_tgt) map per head and then
             picks the sampled rows, as the authors' code does

Run: python benchmarks/train_step.py            (prints a markdown table; ~3–5 min on 2 cores)
     python benchmarks/train_step.py --preset flux-dev --device cuda --dtype bfloat16 --rounds 1
         FLUX.1-dev's shape (19 + 38 blocks, hidden 3072, 512 text tokens); memory is the CUDA
         allocator's peak instead of the process's RSS
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from building import built_on  # a sibling script: benchmarks/ is on sys.path when run
from diffusers import FluxTransformer2DModel

from mosaic_studio.mosaic.attention import install_mosaic_processors
from mosaic_studio.mosaic.lora import reference_lora_config
from mosaic_studio.mosaic.losses import mosaic_losses
from mosaic_studio.mosaic.probe import AttentionProbe, all_double_blocks, early_double_blocks, eq8_rows
from mosaic_studio.mosaic.transformer import grid_position_ids, mosaic_forward, reference_position_ids

ALPHA, BETA = 0.4, 0.6  # paper defaults (Eq. 15)
VARIANTS = ("off", "on", "on_all", "naive_all")


class FullMapProbe(AttentionProbe):
    """The authors' way: softmax for every reference token, then select the sampled rows."""

    def _select_rows(self, query):
        return query  # keep all rows for the map

    def observe(self, reference_query, target_key):
        full = eq8_rows(reference_query, target_key)  # (B, K·N_ref, N_tgt), built from (B, H, K·N_ref, N_tgt)
        rows = full.gather(1, self.rows[:, :, None].expand(-1, -1, full.shape[-1]))
        self._total = rows if self._total is None else self._total + rows
        self.count += 1


# FLUX.1-dev's transformer shape; the CPU default is the small one given by the flags.
FLUX_DEV = dict(double=19, single=38, heads=24, head_dim=128, text=512, text_dim=4096, pooled_dim=768)


def build(args):
    torch.manual_seed(0)
    with built_on(args.device, args.torch_dtype):
        model = FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,
            num_layers=args.double,
            num_single_layers=args.single,
            attention_head_dim=args.head_dim,
            num_attention_heads=args.heads,
            joint_attention_dim=args.text_dim,
            pooled_projection_dim=args.pooled_dim,
            axes_dims_rope=(args.head_dim // 4, 3 * args.head_dim // 8, 3 * args.head_dim // 8),
        )
        model.requires_grad_(False)
        model.add_adapter(reference_lora_config(rank=16))
    install_mosaic_processors(model)
    for name, param in model.named_parameters():
        if "lora_" in name:
            param.data = param.data.float()  # trainable LoRA weights in fp32, as mixed-precision training keeps them
    return model


def batch(args, model):
    g = torch.Generator().manual_seed(1)
    side, k = args.grid, args.refs
    n = side * side
    x0 = torch.randn(1, n, 64, generator=g)
    noise = torch.randn(1, n, 64, generator=g)
    t = torch.rand(1, generator=g)
    tokens_per_ref = torch.stack([torch.randperm(n, generator=g)[: args.points] for _ in range(k)])  # (K, P)
    rows = (tokens_per_ref + torch.arange(k)[:, None] * n).reshape(1, -1)  # (1, K·P) into the concat refs
    data = dict(
        x0=x0,
        noise=noise,
        t=t,
        text=torch.randn(1, args.text, args.text_dim, generator=g),
        pooled=torch.randn(1, args.pooled_dim, generator=g),
        reference_latents=torch.randn(1, k, n, 64, generator=g),
        img_ids=grid_position_ids(side, side),
        txt_ids=torch.zeros(args.text, 3),
        ref_ids=reference_position_ids(k, side, side),
        rows=rows,
        tgt_index=torch.randint(0, n, (1, k * args.points), generator=g),
        ref_index=torch.arange(k).repeat_interleave(args.points)[None],
    )
    return {
        key: v.to(args.device, args.torch_dtype) if v.is_floating_point() else v.to(args.device)
        for key, v in data.items()
    }


def step(model, b, variant, optimizer):
    x_t = (1 - b["t"]) * b["x0"] + b["t"] * b["noise"]
    probe = None
    if variant != "off":
        blocks = early_double_blocks(model) if variant == "on" else all_double_blocks(model)
        probe = (FullMapProbe if variant.startswith("naive") else AttentionProbe)(b["rows"])
    forward = lambda: mosaic_forward(  # noqa: E731
        model,
        x_t,
        encoder_hidden_states=b["text"],
        pooled_projections=b["pooled"],
        timestep=b["t"],
        img_ids=b["img_ids"],
        txt_ids=b["txt_ids"],
        reference_latents=b["reference_latents"],
        reference_ids=b["ref_ids"],
    )
    if probe is None:
        loss = (forward() - (b["noise"] - b["x0"])).square().mean()
    else:
        with probe.attached(model, blocks):
            pred = forward()
        scal, mdl = mosaic_losses(probe.attention(), b["tgt_index"], b["ref_index"], b["reference_latents"].shape[1])
        loss = (pred - (b["noise"] - b["x0"])).square().mean() + ALPHA * scal + BETA * mdl
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def run_variant(args) -> dict:
    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    if cuda:
        # cuDNN's attention backward fails on these shapes with torch 2.11 / CUDA 13 on an H200
        # ("mha_graph.execute ... is_good()"); flash and memory-efficient SDPA are unaffected.
        torch.backends.cuda.enable_cudnn_sdp(False)
    model = build(args)
    b = batch(args, model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    with torch.autocast(args.device.split(":")[0], dtype=args.torch_dtype, enabled=cuda):
        step(model, b, args.variant, optimizer)  # warm-up: allocator, optimizer state
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            step(model, b, args.variant, optimizer)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "variant": args.variant,
        "step_s": statistics.median(times),
        "peak_rss_mb": peak,
        "warm_rss_mb": rss_before / 1024,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=int, default=32, help="target and reference token grid side (32 → 1,024 tokens)")
    parser.add_argument("--refs", type=int, default=4)
    parser.add_argument("--points", type=int, default=150, help="P_k, points per reference")
    parser.add_argument("--text", type=int, default=32)
    parser.add_argument("--double", type=int, default=3)
    parser.add_argument("--single", type=int, default=3)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="each variant runs this many times, interleaved")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--text-dim", type=int, default=64)
    parser.add_argument("--pooled-dim", type=int, default=32)
    parser.add_argument("--preset", choices=("cpu", "flux-dev"), default="cpu", help="flux-dev: FLUX.1-dev's shape")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--variant", choices=VARIANTS, help="internal: run one variant and print JSON")
    args = parser.parse_args()
    if args.preset == "flux-dev":
        for key, value in FLUX_DEV.items():
            setattr(args, key, value)
    args.torch_dtype = getattr(torch, args.dtype)
    if args.variant:
        print(json.dumps(run_variant(args)))
        return

    passthrough = [a for a in sys.argv[1:]]
    results = {v: [] for v in VARIANTS}
    failed = {}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            out = subprocess.run(
                [sys.executable, __file__, *passthrough, "--variant", variant], capture_output=True, text=True
            )
            if out.returncode != 0:  # e.g. out of GPU memory: reported in the table, the others still run
                failed[variant] = (out.stderr.strip().splitlines() or ["no output"])[-1][:120]
                continue
            results[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = {v: min(runs, key=lambda r: r["step_s"]) for v, runs in results.items() if runs}
    peak = {v: min(r["peak_rss_mb"] for r in runs) for v, runs in results.items() if runs}
    base = best["off"]
    n = args.grid**2
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {args.threads} threads"
    print(
        f"\nTraining step, K={args.refs}, P={args.points}/ref, {n} target + {args.refs}×{n} reference tokens, "
        f"{args.double}+{args.single} blocks, {args.heads} heads × {args.head_dim}, {args.text} text tokens, "
        f"{args.dtype} on {device_name} "
        f"(best of {args.rounds}×{args.steps} steps)\n"
    )
    memory = "peak CUDA MB" if args.device.startswith("cuda") else "peak RSS MB"
    print(f"| variant | s/step | time vs off | {memory} | memory vs off |")
    print("|---|---|---|---|---|")
    for v in VARIANTS:
        if v not in best:
            print(f"| {v} | failed: {failed.get(v, '?')} | | | |")
            continue
        print(
            f"| {v} | {best[v]['step_s']:.3f} | {best[v]['step_s'] / base['step_s']:.3f} "
            f"| {peak[v]:.0f} | {peak[v] / peak['off']:.3f} |"
        )


if __name__ == "__main__":
    main()
