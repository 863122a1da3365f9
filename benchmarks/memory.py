"""Memory and time per precision: float32, bfloat16 and int8 weight-only (torchao), side by side.

Every setting runs in a fresh worker process of this script, one after the other, so each one's
resident memory is its own. Measured per setting:

- stored MB: bytes of the tensors really stored (`mosaic.quantization.stored_bytes`: torchao's
  int8 data, scales and zero points included), of the transformer and of T5;
- RSS MB: the worker's resident memory after loading minus before (imports done), and its peak
  over loading and generating minus the same baseline;
- load s and s/step (a denoising step: MOSAIC forwards with 3 references, CFG included for the
  tiny default, which is not guidance-distilled);
- error: relative L2 distance of the output to the float32 setting's, same seed.

Two models: the embedded default (the whole pipeline through `load_studio_pipeline`, LoRA
included, transformer and T5 quantized), and a FLUX-shaped transformer with random weights
(FLUX.1-dev's layout and head size, width and depth reduced to fit a 2-core CPU), with a
random reference LoRA, where int8's effect on the weights is not diluted by embeddings.

CPU offload moves each component onto the GPU only while it runs; on a CPU everything already
lives in system RAM, so it does not apply there (`--device cuda` adds offload rows and the GPU
peak; not run where no GPU is present).

  python benchmarks/memory.py                       # both models on the CPU (~3 min on 2 cores)
  python benchmarks/memory.py --device cuda         # with offload rows and peak GPU memory
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch
from building import built_on  # a sibling script: benchmarks/ is on sys.path when run

MB = 1e6
FLUX_SHAPED = dict(  # FLUX.1-dev: 19 double + 38 single blocks, 24 heads of 128 (hidden 3072)
    num_layers=2,
    num_single_layers=4,
    attention_head_dim=128,
    num_attention_heads=8,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    axes_dims_rope=(16, 56, 56),
    guidance_embeds=True,
)
SETTINGS = {  # name → (dtype, quantize)
    "float32": ("float32", "none"),
    "bfloat16": ("bfloat16", "none"),
    "int8 (float32 compute)": ("float32", "int8"),
    "int8 (bfloat16 compute)": ("bfloat16", "int8"),
}


def rss() -> float:
    """Resident MB once freed memory went back to the system: glibc keeps freed blocks (the float
    weights that quantization replaced) mapped until asked to trim, which would count them."""
    gc.collect()
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return psutil.Process().memory_info().rss / MB


def peak_rss() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB  # Linux reports KiB


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def references(count: int = 3):
    from PIL import Image

    from mosaic_studio import DEFAULT_MODEL_DIR

    paths = sorted((DEFAULT_MODEL_DIR.parent / "examples").glob("scene*.png"))[:count]
    return [Image.open(path).convert("RGB") for path in paths]


def tiny_worker(*, dtype: str, quantize: str, offload: bool, device: str, steps: int, out: Path) -> dict:
    """The embedded default pipeline, generating 128 × 128 px with 3 references."""
    from mosaic_studio.mosaic.quantization import stored_bytes
    from mosaic_studio.studio.quantization import load_studio_pipeline

    refs = references()
    baseline = rss()
    start = time.perf_counter()
    pipe = load_studio_pipeline(device=device, dtype=dtype, quantize=quantize, cpu_offload=offload)
    loaded = time.perf_counter() - start
    after_load = rss()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    def generate():
        return pipe(
            "a chest, a bird and a robed figure",
            reference_images=refs,
            height=128,
            width=128,
            num_inference_steps=steps,
            output_type="latent",
            generator=torch.Generator().manual_seed(0),
        ).images

    generate()  # warm-up
    sync(device)
    start = time.perf_counter()
    latents = generate()
    sync(device)
    per_step = (time.perf_counter() - start) / steps
    torch.save(latents.float().cpu(), out)
    return {
        "transformer_mb": stored_bytes(pipe.transformer) / MB,
        "t5_mb": stored_bytes(pipe.text_encoder_2) / MB,
        "rest_mb": (stored_bytes(pipe.text_encoder) + stored_bytes(pipe.vae)) / MB,
        "rss_load_mb": after_load - baseline,
        "rss_peak_mb": peak_rss() - baseline,
        "load_s": loaded,
        "step_s": per_step,
        "gpu_peak_mb": torch.cuda.max_memory_allocated() / MB if device.startswith("cuda") else None,
    }


def flux_shaped_worker(*, dtype: str, quantize: str, offload: bool, device: str, steps: int, out: Path) -> dict:
    """A random FLUX-shaped transformer with a reference LoRA: one forward at 16 × 16 target tokens,
    3 references of 16 × 16 and 64 text tokens, per step."""
    from diffusers import FluxTransformer2DModel

    from mosaic_studio.mosaic.attention import install_mosaic_processors
    from mosaic_studio.mosaic.lora import reference_lora_config
    from mosaic_studio.mosaic.quantization import stored_bytes
    from mosaic_studio.mosaic.transformer import grid_position_ids, mosaic_forward, reference_position_ids

    if offload:
        raise ValueError("offload is a pipeline setting; the bare transformer has no components to move")
    torch_dtype = getattr(torch, dtype)
    baseline = rss()
    start = time.perf_counter()
    torch.manual_seed(0)
    with built_on("cpu", torch_dtype):  # allocated in its dtype: no float32 copy inflates the peak
        model = FluxTransformer2DModel(patch_size=1, in_channels=64, **FLUX_SHAPED).eval()
    if quantize == "int8":  # the float weights exist first, as they do one by one when diffusers loads
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        quantize_(model, Int8WeightOnlyConfig())  # what diffusers' TorchAoConfig applies on loading
    model.add_adapter(reference_lora_config(16), adapter_name="subject")
    install_mosaic_processors(model)
    model.to(device)
    loaded = time.perf_counter() - start
    after_load = rss()

    grid, text_len, k = 16, 64, 3
    g = torch.Generator().manual_seed(1)
    kw = dict(device=device, dtype=torch_dtype)

    def random(*shape):
        return torch.randn(*shape, generator=g).to(**kw)

    inputs = dict(
        hidden_states=random(1, grid * grid, 64),
        encoder_hidden_states=random(1, text_len, FLUX_SHAPED["joint_attention_dim"]),
        pooled_projections=random(1, FLUX_SHAPED["pooled_projection_dim"]),
        timestep=torch.full((1,), 0.5, **kw),
        img_ids=grid_position_ids(grid, grid, **kw),
        txt_ids=torch.zeros(text_len, 3, **kw),
        guidance=torch.full((1,), 3.5, **kw),
        reference_latents=random(1, k, grid * grid, 64),
        reference_ids=reference_position_ids(k, grid, grid, **kw),
    )
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        output = mosaic_forward(model, **inputs)  # warm-up
        times = []
        for _ in range(steps):
            sync(device)
            begin = time.perf_counter()
            mosaic_forward(model, **inputs)
            sync(device)
            times.append(time.perf_counter() - begin)
    torch.save(output.float().cpu(), out)
    return {
        "transformer_mb": stored_bytes(model) / MB,
        "t5_mb": None,
        "rest_mb": None,
        "rss_load_mb": after_load - baseline,
        "rss_peak_mb": peak_rss() - baseline,
        "load_s": loaded,
        "step_s": statistics.median(times),
        "gpu_peak_mb": torch.cuda.max_memory_allocated() / MB if device.startswith("cuda") else None,
    }


WORKERS = {"tiny default": tiny_worker, "FLUX-shaped": flux_shaped_worker}


def run_worker(args) -> None:
    """Inside a worker process: one setting, its numbers as JSON on the last stdout line."""
    torch.set_num_threads(args.threads)
    dtype, quantize = SETTINGS[args.setting]
    steps = args.steps if args.model == "tiny default" else args.forwards
    result = WORKERS[args.model](
        dtype=dtype, quantize=quantize, offload=args.offload, device=args.device, steps=steps, out=args.out
    )
    print(json.dumps(result))


def measure(model: str, setting: str, offload: bool, args, out: Path) -> dict:
    command = [sys.executable, __file__, "--worker", "--model", model, "--setting", setting, "--out", str(out)]
    command += ["--device", args.device, "--threads", str(args.threads), "--steps", str(args.steps)]
    command += ["--forwards", str(args.forwards)]
    command += ["--offload"] if offload else []
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if done.returncode:
        raise RuntimeError(f"{model} / {setting}: worker failed\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def relative_error(path: Path, reference: Path) -> float:
    value, base = torch.load(path), torch.load(reference)
    return float((value - base).norm() / base.norm())


def number(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def table(model: str, rows: list[tuple[str, bool, dict | None, float | None]], gpu: bool) -> list[str]:
    lines = [
        f"**{model}**",
        "",
        "| setting | CPU offload | transformer MB | T5 MB | CLIP + VAE MB | RSS after load MB | peak RSS MB "
        "| load s | s/step | error vs float32 |" + (" GPU peak MB |" if gpu else ""),
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if gpu else ""),
    ]
    for setting, offload, result, error in rows:
        if result is None:
            note = "does not apply on a CPU: every component already lives in system RAM"
            lines.append(f"| {setting} | yes | {note} |" + " |" * (7 + gpu))
            continue
        cells = [
            setting,
            "yes" if offload else "no",
            number(result["transformer_mb"]),
            number(result["t5_mb"]),
            number(result["rest_mb"]),
            number(result["rss_load_mb"], 0),
            number(result["rss_peak_mb"], 0),
            number(result["load_s"], 1),
            number(result["step_s"], 3),
            "reference" if error is None else f"{error:.4f}",
        ] + ([number(result["gpu_peak_mb"], 0)] if gpu else [])
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per worker")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps of the tiny default")
    parser.add_argument("--forwards", type=int, default=2, help="timed forwards of the FLUX-shaped transformer")
    parser.add_argument("--models", nargs="+", choices=WORKERS, default=list(WORKERS))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=WORKERS, help=argparse.SUPPRESS)
    parser.add_argument("--setting", choices=SETTINGS, help=argparse.SUPPRESS)
    parser.add_argument("--offload", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args)
        return

    gpu = args.device.startswith("cuda")
    report = []
    with tempfile.TemporaryDirectory() as folder:
        for model in args.models:
            rows, reference = [], None
            # offload is a pipeline setting (the tiny default's), measured where there is a GPU
            offloads = (False, True) if model == "tiny default" and gpu else (False,)
            for index, setting in enumerate(SETTINGS):
                for offload in offloads:
                    out = Path(folder) / f"{model}-{index}-{offload}.pt"
                    result = measure(model, setting, offload, args, out)
                    reference = reference or out
                    error = None if out == reference else relative_error(out, reference)
                    rows.append((setting, offload, result, error))
                    print(f"{model} / {setting} / offload={offload}: {result}", file=sys.stderr)
            if model == "tiny default" and not gpu:
                rows.append(("any of the above", True, None, None))
            report += [*table(model, rows, gpu), ""]
    where = torch.cuda.get_device_name() if gpu else f"CPU, {args.threads} thread(s) per worker"
    print(
        f"torch {torch.__version__}, {where}; tiny default: {args.steps} steps, "
        f"FLUX-shaped: median of {args.forwards} forwards\n"
    )
    print("\n".join(report))


if __name__ == "__main__":
    main()
