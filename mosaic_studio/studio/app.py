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


class StudioBlocks(gr.Blocks):
    """gr.Blocks whose launch limits uploads to limits.MAX_UPLOAD_BYTES unless told otherwise:
    gradio takes max_file_size from launch() only, so however the studio is served (main, a
    Space, tests) an oversized upload is refused while it streams in."""

    def launch(self, *args, max_file_size: str | int | None = MAX_UPLOAD_BYTES, **kwargs):
        return super().launch(*args, max_file_size=max_file_size, **kwargs)


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


def main(argv=None) -> None:
    from mosaic_studio.studio.quantization import load_studio_pipeline

    args = parse_args(argv)
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
    demo = build_demo(
        pipe,
        store=args.store,
        model_info={"model": args.model, "lora": args.lora},
        max_queue=args.max_queue,
        admin=args.admin,
        annotators=args.annotators,
    )
    demo.launch(server_name=args.host, server_port=args.port, share=args.share)
