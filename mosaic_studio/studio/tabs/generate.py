"""The Generate tab: layout, events and its Gradio-facing handlers. Bad input: one line
near the Generate button (the other outputs stay as they were); through the API, a gr.Error."""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import gradio as gr

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.mosaic.data.semalign import MAX_REFERENCES
from mosaic_studio.mosaic.images import REFERENCE_CROP_TOLERANCE, TOLERANT_CROP
from mosaic_studio.studio.background import backend_name
from mosaic_studio.studio.examples import load_examples
from mosaic_studio.studio.generation import (
    MAX_IMAGES,
    MAX_REFERENCE_SIDE,
    MAX_REFERENCE_STRENGTH,
    MAX_SEED,
    MAX_SIDE,
    MAX_STEPS,
    MIN_SIDE,
    Request,
    generate,
    random_seed,
    snap_side,
)
from mosaic_studio.studio.limits import MAX_PROMPT_CHARS, MAX_UPLOAD_MB, PREVIEW_CONCURRENCY_ID, PREVIEWS_AT_ONCE
from mosaic_studio.studio.references import preview
from mosaic_studio.studio.session import Generation
from mosaic_studio.studio.space import on_gpu
from mosaic_studio.studio.tabs.views import components, user_error
from mosaic_studio.world.shapes import KINDS

GENERATIONS_AT_ONCE = 1  # one pipeline: its scheduler and attention processors hold per-call state
STRENGTH_STEP = 0.05
FAST_MODE_INFO = (
    "references attend only to themselves and are computed once: later steps cost about as much as "
    "with no references, but subjects may fit the scene less well (not the attention the model was trained with)"
)


class GenerateView(NamedTuple):
    """What the Generate button updates. The field order is the /generate API's output order
    (without `generation`, a gr.State, which the API does not return)."""

    gallery: list[str]
    downloads: list[str]
    seed: int
    generation: Generation  # this session's gr.State
    summary: str


class GenerateShown(NamedTuple):
    """What the Generate button updates in the page: GenerateView's outputs and the status line
    under the button (the one place a refused request is shown)."""

    gallery: list[str]
    downloads: list[str]
    seed: int
    generation: Generation
    summary: str
    status: str


class SizeView(NamedTuple):
    """The size boxes, snapped to whole tokens (or left alone), and what was changed and why."""

    width: int
    height: int
    reference_size: int
    size_note: str


def shown_in_place(on_generate):
    """The Generate button's handler from the API's `on_generate`: a refused request (gr.Error,
    already logged) becomes the status line and every other output stays as it was; gradio
    would otherwise mark each output, the Seed box too, with an error badge."""

    @functools.wraps(on_generate)  # the same signature: gradio injects `progress` through it
    def on_click(*args, **kwargs) -> GenerateShown:
        try:
            view = on_generate(*args, **kwargs)
        except gr.Error as error:
            unchanged = [gr.skip() for _ in GenerateView._fields]
            return GenerateShown(*unchanged, status=f"**Not generated:** {error.message}")
        return GenerateShown(*view, status="")

    return on_click


def crop_tolerance(tolerant_crop) -> int:
    """The Tolerant crop checkbox as `preprocess_reference`'s crop_tolerance."""
    return TOLERANT_CROP if tolerant_crop else REFERENCE_CROP_TOLERANCE


def on_preview(files, remove_bg, tolerant_crop=False):
    try:
        return preview(files, bool(remove_bg), crop_tolerance=crop_tolerance(tolerant_crop))
    except ValueError as error:
        raise user_error(error) from error


def make_size_handler(pipe):
    """Checks the size boxes when one is left or submitted: snaps each to the model's whole
    tokens and refuses out-of-range values (SizeView.size_note says which and why)."""
    token = pipe.pixels_per_token

    def on_size(width, height, reference_size) -> SizeView:
        values, notes = [], []
        for label, value, high in (
            ("Width", width, MAX_SIDE),
            ("Height", height, MAX_SIDE),
            ("Reference size", reference_size, MAX_REFERENCE_SIDE),
        ):
            snapped, note = snap_side(label, value, token=token, high=high)
            values.append(gr.skip() if snapped is None or snapped == value else snapped)
            notes.append(note)
        return SizeView(*values, size_note=" ".join(note for note in notes if note))

    return on_size


def make_generate_handler(pipe, *, outputs_dir, model_info):
    """The /generate API's handler (bad input → gr.Error); with `spaces` installed it runs under
    spaces.GPU. The button's handler is `make_generate_button_handler`."""
    return on_gpu(_generate_handler(pipe, outputs_dir=outputs_dir, model_info=model_info))


def make_generate_button_handler(pipe, *, outputs_dir, model_info):
    """The Generate button's handler: `make_generate_handler`'s, with bad input shown in place."""
    return on_gpu(shown_in_place(_generate_handler(pipe, outputs_dir=outputs_dir, model_info=model_info)))


def _generate_handler(pipe, *, outputs_dir, model_info):
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
        tolerant_crop=False,  # with a default: callers written before it still work
        reference_size=None,  # None: the model's native reference size
        reference_cache=False,
        # one per upload slot (MAX_REFERENCES): gradio passes each slider as its own argument
        strength_1=1.0,
        strength_2=1.0,
        strength_3=1.0,
        strength_4=1.0,
        strength_5=1.0,
        strength_6=1.0,
        progress=gr.Progress(),  # noqa: B008  gradio injects its progress tracker through this default
    ):
        strengths = (strength_1, strength_2, strength_3, strength_4, strength_5, strength_6)
        try:
            seed = random_seed() if randomise else int(seed if seed is not None else 0)
            request = Request(
                prompt or "",
                _whole(height, "height"),
                _whole(width, "width"),
                int(steps),
                float(guidance),
                seed,
                int(num_images),
                int(attention_first),
                int(attention_last),
                reference_crop_tolerance=crop_tolerance(tolerant_crop),
                reference_size=None if reference_size is None else _whole(reference_size, "reference size"),
                reference_cache=bool(reference_cache),
                reference_strengths=tuple(1.0 if s is None else float(s) for s in strengths),
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
        count = len(generation.reference_images)
        at = f" at {generation.settings['reference_size']} px" if count else ""
        summary = (
            f"Seed **{seed}** · {request.width}×{request.height} · {request.steps} steps · guidance "
            f"{request.guidance} · {count} reference(s){at}{_options_note(generation.settings)}. Each PNG carries "
            "the prompt, seed and settings in its metadata."
        )
        return GenerateView(
            gallery=generation.paths, downloads=generation.paths, seed=seed, generation=generation, summary=summary
        )

    return on_generate


def _options_note(settings: dict) -> str:
    """' · fast mode · strengths 1, 0.5' for what differs from the defaults, else ''."""
    note = " · fast mode" if settings.get("reference_cache") else ""
    strengths = settings.get("reference_strengths") or []
    if any(s != 1.0 for s in strengths):
        note += " · strengths " + ", ".join(f"{s:g}" for s in strengths)
    return note


def on_reference_count(files) -> list:
    """One strength slider shown per uploaded reference slot."""
    count = len(files or [])
    return [gr.update(visible=i < count) for i in range(MAX_REFERENCES)]


def _whole(value, name: str) -> int:
    """A size box's value as an int; an empty box or a fraction is refused by name (int() would
    raise a bare TypeError, or drop the fraction and hide the typo)."""
    if value is None or float(value) != int(value):
        raise ValueError(f"{name}={value!r} is not a whole number of pixels")
    return int(value)


def world_kinds() -> str:
    """The synthetic world's kinds of subject, as the embedded default was trained on them."""
    return ", ".join(kind for kinds in KINDS.values() for kind in kinds)


def model_note(pipe) -> str:
    """One line on what the loaded model knows: for the embedded default, its synthetic world
    and that photographs need FLUX.1-dev; nothing for any other model."""
    name = str(getattr(pipe, "name_or_path", "") or "")
    if not name or not Path(name).is_dir() or Path(name).resolve() != DEFAULT_MODEL_DIR.resolve():
        return ""
    return (
        f"The embedded default knows only its synthetic world: {world_kinds()}, drawn flat on white. "
        "Real photographs need FLUX.1-dev: `mosaic-studio --model black-forest-labs/FLUX.1-dev`."
    )


def build(pipe) -> SimpleNamespace:
    """Lay the tab out (inside a `gr.Tab`); `wire` attaches the events."""
    native = pipe.native_settings  # the controls open at the settings the model was trained for
    step = pipe.pixels_per_token
    bg = backend_name()
    ui = SimpleNamespace()
    note = model_note(pipe)
    ui.model_note = gr.Markdown(note, visible=bool(note), elem_id="model-note")
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
                # One row of six square thumbnails whatever the count, and a block as tall as they
                # are: a fixed height (with the label above) cut each reference off at the bottom.
                columns=6,
                fit_columns=False,
                height="auto",
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
            with gr.Row():  # shown per uploaded reference (on_reference_count)
                ui.strengths = [
                    gr.Slider(
                        0.0,
                        MAX_REFERENCE_STRENGTH,
                        value=1.0,
                        step=STRENGTH_STEP,
                        label=f"Reference {i + 1} strength",
                        info="0 ignores it, 1 as trained, 2 doubles its weight" if i == 0 else None,
                        visible=False,
                        elem_id=f"strength-{i + 1}",
                    )
                    for i in range(MAX_REFERENCES)
                ]
            ui.reference_cache = gr.Checkbox(
                label="Fast mode (cache references)", value=False, info=FAST_MODE_INFO, elem_id="fast-mode"
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
                # Number boxes, not sliders: a slider clamps a typed 2000 silently; these are
                # checked when left (make_size_handler), with a note saying what changed.
                sizes = dict(precision=0, step=step, info=f"{MIN_SIDE}–{MAX_SIDE} px, multiples of {step}")
                ui.width = gr.Number(native.width, label="Width", elem_id="width", **sizes)
                ui.height = gr.Number(native.height, label="Height", elem_id="height", **sizes)
                ui.reference_size = gr.Number(
                    native.reference_size,
                    label="Reference size",
                    elem_id="reference-size",
                    **{**sizes, "info": f"{MIN_SIDE}–{MAX_REFERENCE_SIDE} px; the model's: {native.reference_size}"},
                )
            ui.size_note = gr.Markdown(elem_id="size-note")
            with gr.Row():
                ui.steps = gr.Slider(
                    1, MAX_STEPS, value=native.num_inference_steps, step=1, label="Steps", elem_id="steps"
                )
                ui.guidance = gr.Slider(
                    1.0, 10.0, value=native.guidance_scale, step=0.1, label="Guidance", elem_id="guidance"
                )
            with gr.Row():
                ui.seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed", elem_id="seed")
                ui.randomise = gr.Checkbox(label="Randomise seed", value=False)
                ui.num_images = gr.Slider(1, MAX_IMAGES, value=1, step=1, label="Images")
            with gr.Accordion("Attention recording (for the Attention tab)", open=False):
                gr.Markdown(
                    "Which denoising steps are recorded (all by default). The record keeps up to 10 "
                    "step bins, so the Attention tab can show any range of them after generating; "
                    "a narrower range here only makes those bins finer. The last step is clamped to Steps."
                )
                with gr.Row():
                    ui.attention_first = gr.Slider(1, MAX_STEPS, value=1, step=1, label="From step")
                    ui.attention_last = gr.Slider(1, MAX_STEPS, value=MAX_STEPS, step=1, label="To step")
            ui.run = gr.Button("Generate", variant="primary", elem_id="generate")
            ui.status = gr.Markdown(elem_id="generate-status")  # a refused request, said once, here
            with gr.Row(visible=False):  # API-only trigger of /generate (errors raise there, for scripts)
                ui.api_run = gr.Button()
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
        ui.reference_size,
        ui.reference_cache,
        *ui.strengths,
    ]
    ui.files.change(on_reference_count, ui.files, ui.strengths, api_visibility="private", show_progress="hidden")
    sizes = [ui.width, ui.height, ui.reference_size]
    for trigger in (box_event for box in sizes for box_event in (box.blur, box.submit)):
        # Not .change: it fires on every keystroke, and would snap a half-typed 2 to 64
        trigger(
            make_size_handler(pipe), sizes, components(SizeView, ui), api_visibility="private", show_progress="hidden"
        )
    handlers = dict(pipe=pipe, outputs_dir=outputs_dir, model_info=model_info)
    one_at_a_time = dict(concurrency_limit=GENERATIONS_AT_ONCE, concurrency_id="gpu")  # both share the pipeline
    # Two events, one handler: the API's raises on bad input (a script needs the exception); the
    # button's shows it in the status line and leaves every other output as it was.
    ui.api_run.click(
        make_generate_handler(**handlers),
        inputs,
        components(GenerateView, ui, generation=generation),
        api_name="generate",
        **one_at_a_time,
    )
    return ui.run.click(
        make_generate_button_handler(**handlers),
        inputs,
        components(GenerateShown, ui, generation=generation),
        api_visibility="private",
        **one_at_a_time,
    )
