"""MOSAIC Studio: a Gradio app. `python app.py` runs the embedded default model on a CPU.

Generate tab: 1–6 subject references + a prompt → images that contain every subject.
Model and serving options come from flags or environment variables (see --help).
"""

from __future__ import annotations

import argparse
import os

import gradio as gr
import torch

from mosaic import DEFAULT_MODEL_DIR
from mosaic.loading import AUTO, load_pipeline

MAX_SEED = 2**31 - 1


def generate(pipe, files, prompt, height, width, steps, guidance, seed, num_images, progress=gr.Progress()):
    """Generate-tab handler: uploaded reference files → generated PIL images.
    Bad input becomes a visible gr.Error; the app keeps serving."""
    references = [f if isinstance(f, str) else getattr(f, "name", f) for f in (files or [])]
    steps = int(steps)

    def on_step(_pipe, i, _t, _tensors):
        progress((i + 1) / steps, desc=f"denoising step {i + 1}/{steps}")
        return {}

    try:
        out = pipe(
            prompt or "", references=references, height=int(height), width=int(width),
            num_inference_steps=steps, guidance_scale=float(guidance), num_images_per_prompt=int(num_images),
            generator=torch.Generator().manual_seed(int(seed)), callback_on_step_end=on_step,
        )  # fmt: skip
    except (ValueError, TypeError, FileNotFoundError) as error:
        raise gr.Error(str(error)) from error
    return out.images


def build_demo(pipe) -> gr.Blocks:
    with gr.Blocks(title="MOSAIC Studio") as demo:
        gr.Markdown("# MOSAIC Studio\nUpload 1–6 subject images, describe the scene, generate.")
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column():
                    files = gr.File(label="References (1–6 images)", file_count="multiple", file_types=["image"])
                    prompt = gr.Textbox(label="Prompt", placeholder="a cat and a dog on a beach")
                    with gr.Row():
                        height = gr.Slider(64, 1024, value=256, step=16, label="Height")
                        width = gr.Slider(64, 1024, value=256, step=16, label="Width")
                    with gr.Row():
                        steps = gr.Slider(1, 50, value=20, step=1, label="Steps")
                        guidance = gr.Slider(1.0, 10.0, value=3.5, step=0.1, label="Guidance")
                    with gr.Row():
                        seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed")
                        num_images = gr.Slider(1, 4, value=1, step=1, label="Images")
                    run = gr.Button("Generate", variant="primary")
                gallery = gr.Gallery(label="Generated", columns=2)
        run.click(
            lambda *args: generate(pipe, *args),
            inputs=[files, prompt, height, width, steps, guidance, seed, num_images],
            outputs=gallery,
        )
    return demo


def parse_args(argv=None):
    env = os.environ.get
    parser = argparse.ArgumentParser(description="MOSAIC Studio")
    parser.add_argument("--model", default=env("MOSAIC_MODEL", str(DEFAULT_MODEL_DIR)), help="FLUX folder or hub id, e.g. black-forest-labs/FLUX.1-dev")
    parser.add_argument("--lora", default=env("MOSAIC_LORA", AUTO), help='"auto", "none", or a LoRA file/folder/hub id')
    parser.add_argument("--lora-weight-name", default=env("MOSAIC_LORA_WEIGHT_NAME"))
    parser.add_argument("--device", default=env("MOSAIC_DEVICE"), help="cuda, cpu, … (default: cuda when available)")
    parser.add_argument("--dtype", default=env("MOSAIC_DTYPE"), help="float32, bfloat16 or float16")
    parser.add_argument("--cpu-offload", action="store_true", default=env("MOSAIC_CPU_OFFLOAD") == "1")
    parser.add_argument("--host", default=env("MOSAIC_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("MOSAIC_PORT", "7860")))
    parser.add_argument("--share", action="store_true")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    lora = None if args.lora == "none" else args.lora
    pipe = load_pipeline(args.model, lora, args.lora_weight_name, args.device, args.dtype, args.cpu_offload)
    build_demo(pipe).queue(default_concurrency_limit=1).launch(server_name=args.host, server_port=args.port, share=args.share)
