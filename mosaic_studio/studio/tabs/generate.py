"""The Generate tab: layout, events and its Gradio-facing handlers (bad input → gr.Error)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import NamedTuple

import gradio as gr

from mosaic_studio.mosaic.images import REFERENCE_CROP_TOLERANCE, TOLERANT_CROP
from mosaic_studio.mosaic.pipeline import default_settings
from mosaic_studio.studio.background import backend_name
from mosaic_studio.studio.examples import load_examples
from mosaic_studio.studio.generation import (
    MAX_IMAGES,
    MAX_SEED,
    MAX_SIDE,
    MAX_STEPS,
    MIN_SIDE,
    Request,
    generate,
    random_seed,
)
from mosaic_studio.studio.limits import MAX_PROMPT_CHARS, MAX_UPLOAD_MB, PREVIEW_CONCURRENCY_ID, PREVIEWS_AT_ONCE
from mosaic_studio.studio.references import preview
from mosaic_studio.studio.session import Generation
from mosaic_studio.studio.space import on_gpu
from mosaic_studio.studio.tabs.views import components, user_error

GENERATIONS_AT_ONCE = 1  # one pipeline: its scheduler and attention processors hold per-call state


class GenerateView(NamedTuple):
    """What the Generate button updates. The field order is the /generate API's output order
    (without `generation`, a gr.State, which the API does not return)."""

    gallery: list[str]
    downloads: list[str]
    seed: int
    generation: Generation  # this session's gr.State
    summary: str


def crop_tolerance(tolerant_crop) -> int:
    """The Tolerant crop checkbox as `preprocess_reference`'s crop_tolerance."""
    return TOLERANT_CROP if tolerant_crop else REFERENCE_CROP_TOLERANCE


def on_preview(files, remove_bg, tolerant_crop=False):
    try:
        return preview(files, bool(remove_bg), crop_tolerance=crop_tolerance(tolerant_crop))
    except ValueError as error:
        raise user_error(error) from error


def make_generate_handler(pipe, *, outputs_dir, model_info):
    """The Generate button's handler; with `spaces` installed it runs under spaces.GPU."""

    def on_generate(
        files,
        prompt,
        categories,
        width,
        height,
        steps,
        guidance,
        seed,
        randomise,
        num_images,
        remove_bg,
        attention_first,
        attention_last,
        tolerant_crop=False,  # last, with a default: callers written before it still work
        progress=gr.Progress(),  # noqa: B008  gradio injects its progress tracker through this default
    ):
        try:
            seed = random_seed() if randomise else int(seed if seed is not None else 0)
            request = Request(
                prompt or "",
                int(height),
                int(width),
                int(steps),
                float(guidance),
                seed,
                int(num_images),
                int(attention_first),
                int(attention_last),
                reference_crop_tolerance=crop_tolerance(tolerant_crop),
            )
            progress((0, request.steps), desc="encoding")
            generation = generate(
                pipe,
                request,
                files,
                categories,
                bool(remove_bg),
                outputs_dir,
                on_step=lambda i, n: progress((i, n), desc=f"denoising step {i}/{n}"),
                model_info=model_info,
            )
        except (ValueError, TypeError) as error:
            raise user_error(error) from error
        summary = (
            f"Seed **{seed}** · {request.width}×{request.height} · {request.steps} steps · guidance "
            f"{request.guidance} · {len(generation.reference_images)} reference(s). Each PNG carries the "
            "prompt, seed and settings in its metadata."
        )
        return GenerateView(
            gallery=generation.paths, downloads=generation.paths, seed=seed, generation=generation, summary=summary
        )

    return on_gpu(on_generate)


def build(pipe) -> SimpleNamespace:
    """Lay the tab out (inside a `gr.Tab`); `wire` attaches the events."""
    d = default_settings(pipe)
    step = pipe.pixels_per_token
    bg = backend_name()
    ui = SimpleNamespace()
    with gr.Row():
        with gr.Column(scale=1):
            ui.files = gr.File(
                label=f"References (1–6 images of single subjects, at most {MAX_UPLOAD_MB} MB each)",
                file_count="multiple",
                file_types=["image"],
                elem_id="references",
            )
            ui.preview = gr.Gallery(
                label="As the model sees them (subject crop, white padding)",
                columns=6,
                height=170,
                object_fit="contain",
                elem_id="reference-preview",
            )
            ui.remove_bg = gr.Checkbox(
                label=f"Remove backgrounds ({bg})" if bg else "Remove backgrounds",
                value=False,
                interactive=bg is not None,
                info=None if bg else "needs a segmentation backend: pip install rembg",
            )
            ui.tolerant_crop = gr.Checkbox(
                label="Tolerant crop for noisy backgrounds (JPEG)",
                value=False,
                info="off: the official exact-white crop; on: near-white noise is not cropped as subject",
            )
            ui.prompt = gr.Textbox(
                label="Prompt",
                placeholder="a red vase and a blue person on a plain background",
                max_length=MAX_PROMPT_CHARS,  # the browser's cap; the server checks it again (limits.py)
                elem_id="prompt",
            )
            ui.categories = gr.Textbox(
                label="Subject categories (optional, comma-separated, one per reference)",
                placeholder="human, animal, object",
            )
            with gr.Row():
                ui.width = gr.Slider(MIN_SIDE, MAX_SIDE, value=d["side"], step=step, label="Width")
                ui.height = gr.Slider(MIN_SIDE, MAX_SIDE, value=d["side"], step=step, label="Height")
            with gr.Row():
                ui.steps = gr.Slider(1, MAX_STEPS, value=d["steps"], step=1, label="Steps", elem_id="steps")
                ui.guidance = gr.Slider(1.0, 10.0, value=d["guidance"], step=0.1, label="Guidance")
            with gr.Row():
                ui.seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed")
                ui.randomise = gr.Checkbox(label="Randomise seed", value=False)
                ui.num_images = gr.Slider(1, MAX_IMAGES, value=1, step=1, label="Images")
            with gr.Accordion("Attention recording (for the Attention tab)", open=False):
                gr.Markdown(
                    "Maps are averaged over these denoising steps while generating, so the step "
                    "range is chosen here, before generating. The last step is clamped to Steps."
                )
                with gr.Row():
                    ui.attention_first = gr.Slider(1, MAX_STEPS, value=1, step=1, label="From step")
                    ui.attention_last = gr.Slider(1, MAX_STEPS, value=MAX_STEPS, step=1, label="To step")
            ui.run = gr.Button("Generate", variant="primary", elem_id="generate")
        with gr.Column(scale=1):
            ui.gallery = gr.Gallery(
                label="Generated", columns=2, format="png", buttons=["download", "fullscreen"], elem_id="gallery"
            )
            ui.summary = gr.Markdown()
            ui.downloads = gr.File(label="PNG files with metadata", file_count="multiple", elem_id="downloads")
    examples = load_examples()
    ui.examples = gr.Examples(
        examples=[[list(e.references), e.prompt, ", ".join(e.categories), e.width, e.height, e.seed] for e in examples],
        example_labels=[e.name for e in examples],
        inputs=[ui.files, ui.prompt, ui.categories, ui.width, ui.height, ui.seed],
        label="Examples",
    )
    return ui


def wire(ui: SimpleNamespace, *, pipe, generation: gr.State, outputs_dir, model_info) -> gr.events.Dependency:
    """Attach the events; returns the Generate dependency so other tabs can chain `.then`."""
    for trigger in (ui.files.change, ui.remove_bg.change, ui.tolerant_crop.change):
        # Private hides it from the API page only; any client can still queue it, hence its own limit.
        trigger(
            on_preview,
            [ui.files, ui.remove_bg, ui.tolerant_crop],
            ui.preview,
            api_visibility="private",
            show_progress="minimal",
            concurrency_limit=PREVIEWS_AT_ONCE,
            concurrency_id=PREVIEW_CONCURRENCY_ID,
        )
    inputs = [
        ui.files,
        ui.prompt,
        ui.categories,
        ui.width,
        ui.height,
        ui.steps,
        ui.guidance,
        ui.seed,
        ui.randomise,
        ui.num_images,
        ui.remove_bg,
        ui.attention_first,
        ui.attention_last,
        ui.tolerant_crop,
    ]
    return ui.run.click(
        make_generate_handler(pipe, outputs_dir=outputs_dir, model_info=model_info),
        inputs,
        components(GenerateView, ui, generation=generation),
        api_name="generate",
        concurrency_limit=GENERATIONS_AT_ONCE,
        concurrency_id="gpu",
    )
