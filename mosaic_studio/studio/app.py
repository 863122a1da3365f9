"""The studio as one Gradio app: `build_demo(pipe, store=…)` and the `mosaic-studio` command.

Tabs: Generate (1–6 subject references + a prompt → images that contain every subject),
Attention (click a reference point → where it attends in the generated image), Annotate
(review correspondence points in the review store). Each tab's layout and events live in
`mosaic_studio/studio/tabs/`; model and serving options come from flags or environment
variables (`mosaic-studio --help`, `mosaic_studio/studio/options.py`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

import gradio as gr

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.annotator.store import ReviewStore
from mosaic_studio.studio import space  # noqa: F401  first: ZeroGPU wants `spaces` imported before anything touches CUDA
from mosaic_studio.studio.access import Access
from mosaic_studio.studio.limits import MAX_UPLOAD_BYTES
from mosaic_studio.studio.options import default_store_path, parse_args
from mosaic_studio.studio.tabs import annotate, attention, generate

SESSION_TTL_S = 3600  # a generation (with its attention maps) is kept an hour after it was made
UI_CONCURRENCY = 8  # light events (heatmap clicks, annotation) served at once; generation is 1
INTRO = """# MOSAIC Studio
Multi-subject personalised generation with [MOSAIC](https://arxiv.org/abs/2509.01977): upload 1–6
subject images, describe the scene, generate; then see where each reference point attends and
review correspondence points."""
# The reference preview shows every reference whole: gradio's gallery puts its label over the
# top of the thumbnails and each caption over the bottom, and a fixed-height gallery cut them
# off. Here: room for the label, captions under the images, as many rows as the count needs.
STUDIO_CSS = """
#reference-preview .grid-wrap { height: auto; min-height: 0; overflow: visible; padding-top: 2.25rem; }
#reference-preview .grid-container { grid-template-columns: repeat(auto-fill, minmax(88px, 1fr)); }
#reference-preview .thumbnail-item { aspect-ratio: auto; height: auto; display: flex; flex-direction: column; }
#reference-preview .thumbnail-item > img { aspect-ratio: 1 / 1; height: auto; }
#reference-preview .caption-label { position: static; max-width: none; border: 0; border-radius: 0; }
"""


class StudioBlocks(gr.Blocks):
    """gr.Blocks whose launch limits uploads to limits.MAX_UPLOAD_BYTES and styles the page with
    STUDIO_CSS unless told otherwise: gradio takes both from launch() only, so however the
    studio is served (main, a Space, tests) an oversized upload is refused while it streams in,
    and the page looks the same."""

    def launch(self, *args, max_file_size: str | int | None = MAX_UPLOAD_BYTES, css: str | None = STUDIO_CSS, **kwargs):
        return super().launch(*args, max_file_size=max_file_size, css=css, **kwargs)


def build_demo(
    pipe,
    *,
    store: str | Path | ReviewStore | None = None,
    outputs_dir: str | Path | None = None,
    model_info: dict | None = None,
    max_queue: int = 20,
    admin: bool = False,
    annotators: Iterable[str] | None = None,
) -> gr.Blocks:
    """The studio on `pipe` (a MosaicPipeline). store: the review store's path (created when
    missing; default: the user data folder). outputs_dir: where generated PNGs and exports go
    (default: a new temporary folder). max_queue: requests allowed to wait. admin: the Annotate
    tab may re-draw the stratified sample. annotators: when given, the only names reviews are
    saved under (under gradio auth, the logged-in user is the only one in any case).

    Generations run one at a time (the pipeline and its scheduler hold per-call state); the
    other events (clicks, annotation) run up to UI_CONCURRENCY at once."""
    store_path = Path(store.path if isinstance(store, ReviewStore) else store or default_store_path()).resolve()
    store_path.parent.mkdir(parents=True, exist_ok=True)
    ReviewStore(store_path).close()  # create or migrate it now, not on the first click
    outputs_dir = Path(outputs_dir or tempfile.mkdtemp(prefix="mosaic-studio-"))
    outputs_dir.mkdir(parents=True, exist_ok=True)
    model_info = model_info or {"model": str(getattr(pipe, "name_or_path", "") or "")}
    print(loaded_line(pipe, model=model_info.get("model") or "?"), flush=True)  # the app's start-up line
    access = Access.of(admin=admin, annotators=annotators)

    with StudioBlocks(title="MOSAIC Studio") as demo:
        gr.Markdown(INTRO)
        generation = gr.State(None, time_to_live=SESSION_TTL_S)  # this session's latest studio.session.Generation
        with gr.Tabs() as tabs:
            with gr.Tab("Generate", id="generate"):
                generate_ui = generate.build(pipe)
            with gr.Tab("Attention", id="attention"):
                attention_ui = attention.build()
            with gr.Tab("Annotate", id="annotate", elem_id="annotate-tab"):
                annotate_ui = annotate.build(admin=access.admin)
        generated = generate.wire(
            generate_ui, pipe=pipe, generation=generation, outputs_dir=outputs_dir, model_info=model_info
        )
        attention.wire(
            attention_ui,
            generation=generation,
            generated=generated,
            store_path=store_path,
            annotate_ui=annotate_ui,
            tabs=tabs,
            access=access,
        )
        annotate.wire(annotate_ui, store_path=store_path, outputs_dir=outputs_dir, access=access)
        demo.load(None, js=annotate.SHORTCUTS_JS)
    return demo.queue(default_concurrency_limit=UI_CONCURRENCY, max_size=max_queue)


def describe_model(model: str | Path) -> str:
    """How the start-up line names `model`: the embedded default by that name, else as given."""
    path = Path(model)
    if path.is_dir() and path.resolve() == DEFAULT_MODEL_DIR.resolve():
        return f"the embedded default ({DEFAULT_MODEL_DIR.name})"
    return str(model)


def loaded_line(pipe, *, model: str | Path) -> str:
    """One line: which model and LoRA were loaded, on which device, and the model's settings."""
    native = pipe.native_settings
    loras = ", ".join(pipe.mosaic_lora_sources.values()) or "none"
    return (
        f"MOSAIC Studio: model {describe_model(model)}, LoRA {loras}, on {pipe._execution_device} "
        f"({str(pipe.transformer.dtype).removeprefix('torch.')}); settings {native.width}×{native.height} px, "
        f"references {native.reference_size} px, {native.num_inference_steps} steps, guidance {native.guidance_scale}"
    )


def build_studio(args) -> gr.Blocks:
    """The studio `mosaic-studio` serves for parsed options `args`: loads the model and builds
    the demo (which says in one line what was loaded, `loaded_line`)."""
    from mosaic_studio.studio.quantization import load_studio_pipeline

    lora = None if args.lora == "none" else args.lora
    pipe = load_studio_pipeline(
        args.model,
        lora=lora,
        lora_weight_name=args.lora_weight_name,
        device=args.device,
        dtype=args.dtype,
        cpu_offload=args.cpu_offload,
        quantize=args.quantize,
    )
    return build_demo(
        pipe,
        store=args.store,
        model_info={"model": args.model, "lora": args.lora},
        max_queue=args.max_queue,
        admin=args.admin,
        annotators=args.annotators,
    )


def serving_line(url: str, *, shared: bool) -> str:
    """Where the studio is served (the port is given, so gradio serves there or fails). Without a
    public link it names the app's own switch for one: gradio's hint would say `share=True` in
    `launch()`, which an app user cannot set."""
    public = "" if shared else " (a public link: --share or MOSAIC_SHARE=1)"
    return f"MOSAIC Studio serving on {url}{public}"


def main(argv=None) -> None:
    args = parse_args(argv)
    demo = build_studio(args)
    # quiet: gradio's own lines give way to serving_line (a public URL gradio still prints itself)
    print(serving_line(f"http://{args.host}:{args.port}", shared=args.share), flush=True)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, quiet=True)
