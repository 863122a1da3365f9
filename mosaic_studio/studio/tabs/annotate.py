"""The Annotate tab: a queue from the review store (stratified sample first), references and
the target side by side with numbered pairs, select / move / add / delete, per-point verdicts
(each moving on to the next unjudged pair), undo, accept / reject, keyboard shortcuts, the
report panel and export.

Clicks while a sample opens. "Load my queue" and accept / reject open a sample while the
previous canvas is still shown. Two things lost a click made then: the progress overlay Gradio
draws over every output of a pending event covered the canvas and swallowed the click, and the
events ran side by side, each reading the opened sample (a gr.State) as it was when it started,
the last to finish overwriting the others. So a click on pair 5 during an opening was lost, and
the next click acted on the freshly opened draft (pair 1 selected). Now:

- an opening shows its progress on the info line only (`show_progress_on`), so the canvas keeps
  taking clicks;
- every event that reads or writes the opened sample runs in one queue, one at a time, in the
  order the browser sent them (ORDERED), so a click sent during an opening acts on its result;
- clicks and draft buttons queue while one of them is pending (trigger_mode "multiple") instead
  of being dropped; loading and saving stay "once" (a double press must not save the next
  sample unseen);
- each carries the caption shown with the canvas it was aimed at (`shown`): one aimed at a
  sample that another has replaced since (accept opening the next) does nothing but say so,
  rather than landing on the new sample.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import gradio as gr
from PIL import Image

from mosaic_studio.annotator.records import Decision
from mosaic_studio.annotator.store import ReviewStore, VersionConflict
from mosaic_studio.annotator.verify import DEFAULT_FRACTION, stratified_sample
from mosaic_studio.studio import annotation
from mosaic_studio.studio.access import DIRECT, Access
from mosaic_studio.studio.annotation import MODES, SELECT_MODE, Opened
from mosaic_studio.studio.limits import MAX_NAME_CHARS
from mosaic_studio.studio.report import archive, export_accepted, report_markdown
from mosaic_studio.studio.store_files import display_path
from mosaic_studio.studio.tabs.views import components, skipped, user_error

SHORTCUTS = {
    "c": "ann-correct",
    "w": "ann-wrong",
    "u": "ann-unsure",
    "n": "ann-next",
    "p": "ann-prev",
    "d": "ann-delete",
    "Delete": "ann-delete",
    "z": "ann-undo",
    "A": "ann-accept",
    "R": "ann-reject",
}
SHORTCUTS_HELP = (
    "On the canvas a number's suffix is its verdict: **+** correct, **x** wrong, **?** unsure.\n\n"
    "Keys (Annotate tab, outside text fields): **c** correct · **w** wrong · **u** unsure (each moves on "
    "to the next pair to judge) · **n** / **p** next / previous pair without judging · **d** or **Delete** "
    "delete · **z** or **Ctrl+Z** undo · **Shift+A** accept · **Shift+R** reject"
)
SHORTCUTS_JS = """() => {
  if (window.__mosaicShortcuts) return;
  window.__mosaicShortcuts = true;
  const keys = __SHORTCUTS__;
  document.addEventListener("keydown", (event) => {
    const target = event.target;
    if (target && (["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName) || target.isContentEditable)) return;
    const tab = document.getElementById("annotate-tab");
    if (!tab || tab.offsetParent === null) return;
    const undo = event.key.toLowerCase() === "z" && (event.ctrlKey || event.metaKey);
    if ((event.ctrlKey || event.metaKey || event.altKey) && !undo) return;
    const button = document.getElementById(keys[undo ? "z" : event.key]);
    if (!button) return;
    event.preventDefault();
    button.click();
  });
}""".replace("__SHORTCUTS__", json.dumps(SHORTCUTS))
EVENTS = "annotate"  # the concurrency group of the events on the opened sample (module docstring)
ORDERED = {"concurrency_id": EVENTS, "concurrency_limit": 1}  # one at a time, first sent first
DRAW_HINT_ADMIN = "Press **Draw the stratified sample** below."
DRAW_HINT_OTHERS = "An admin draws it (the app started with `--admin`: Study setup)."


class DraftView(NamedTuple):
    """The opened sample after a draft action (click, judge, undo, …)."""

    opened: Opened | None  # gr.State
    canvas: Image.Image | None
    info: str


class OpenedView(NamedTuple):
    """A sample opened (or none left): DraftView's fields, then the queue menu and the progress.
    Also what "send to Annotate" opens (attention.SendView)."""

    opened: Opened | None  # gr.State
    canvas: Image.Image | None
    info: str
    queue: dict
    progress: str


def _view(opened, mode) -> DraftView:
    return DraftView(opened=opened, canvas=annotation.render(opened), info=annotation.describe(opened, mode))


def _moved_on(opened: Opened | None, shown: str | None, act: str = "click") -> str | None:
    """Why an event aimed at the canvas shown with caption `shown` must not act on `opened`
    (another sample opened since it was sent), or None. shown None: an API call, which sees no
    canvas. act: what the user did ("click", "press"), for the message."""
    if shown is None or opened is None or shown.startswith(f"**{opened.draft.sample_id}**"):
        return None
    return (
        f"sample {opened.draft.sample_id} opened meanwhile: that {act} was meant for the sample "
        f"shown before, so nothing changed; {act} again"
    )


def _soft(action):
    """Run a draft action; a ValueError (a click that does nothing, nothing to undo) becomes a
    warning toast and leaves everything as it was, as does an action aimed at another sample."""

    def run(opened, mode, shown=None):
        if opened is None:
            gr.Warning("open a sample first: enter your name and press 'Load my queue'")
            return skipped(DraftView)
        stale = _moved_on(opened, shown)
        if stale:
            gr.Warning(stale)
            return skipped(DraftView)
        try:
            return _view(action(opened), mode)
        except ValueError as error:
            gr.Warning(str(error))
            return skipped(DraftView)

    return run


def _draft_action(method, *args):
    return _soft(lambda opened: replace(opened, draft=getattr(opened.draft, method)(*args)))


def build(admin: bool = True) -> SimpleNamespace:
    """admin: show the study setup (re-drawing the sample); its event refuses non-admins anyway."""
    ui = SimpleNamespace()
    ui.opened = gr.State(None)
    with gr.Row():
        ui.annotator = gr.Textbox(
            label="Annotator",
            placeholder="your name",
            max_length=MAX_NAME_CHARS,  # the browser's cap; the server checks it again (access.py)
            elem_id="annotator",
            scale=1,
        )
        ui.load = gr.Button("Load my queue", elem_id="ann-load", scale=0)
        ui.queue = gr.Dropdown(
            [],
            label="Sample (your queue, stratified sample first; or type an id)",
            allow_custom_value=True,
            elem_id="ann-queue",
            scale=2,
        )
    ui.progress = gr.Markdown(elem_id="ann-progress")
    ui.location = gr.Markdown(elem_id="ann-location")  # where the store lives: set by `wire`
    ui.canvas = gr.Image(
        label="References (left) and generated image (right)",
        interactive=False,
        type="pil",
        format="png",
        elem_id="review-canvas",
        buttons=["fullscreen"],
    )
    ui.mode = gr.Radio(list(MODES), value=SELECT_MODE, label="Click mode", elem_id="ann-mode")
    ui.info = gr.Markdown(elem_id="ann-info")
    with gr.Row():
        ui.prev = gr.Button("◀ Previous (p)", elem_id="ann-prev", size="sm")
        ui.next = gr.Button("Next (n) ▶", elem_id="ann-next", size="sm")
        ui.correct = gr.Button("✓ Correct (c)", elem_id="ann-correct", size="sm")
        ui.wrong = gr.Button("✗ Wrong (w)", elem_id="ann-wrong", size="sm")
        ui.unsure = gr.Button("? Unsure (u)", elem_id="ann-unsure", size="sm")
        ui.all_correct = gr.Button("All remaining correct", elem_id="ann-all-correct", size="sm")
        ui.delete = gr.Button("Delete pair (d)", elem_id="ann-delete", size="sm", variant="stop")
        ui.undo = gr.Button("Undo (z)", elem_id="ann-undo", size="sm")
    with gr.Row():
        ui.accept = gr.Button("Accept sample (Shift+A)", variant="primary", elem_id="ann-accept")
        ui.reject = gr.Button("Reject sample (Shift+R)", variant="stop", elem_id="ann-reject")
    gr.Markdown(SHORTCUTS_HELP)
    with gr.Accordion("Report: error rate per stratum, agreement, export", open=False) as ui.report_box:
        ui.sampled_only = gr.Checkbox(
            value=True, label="Stratified sample only (as the paper measures; all reviews until one is drawn)"
        )
        ui.refresh = gr.Button("Refresh report", size="sm", elem_id="ann-refresh")
        ui.report = gr.Markdown(elem_id="ann-report")
        ui.draw = gr.Button("Draw the stratified sample", size="sm", visible=False, elem_id="ann-draw")
        ui.export = gr.Button("Export accepted samples (JSON + images)", size="sm", elem_id="ann-export")
        ui.export_file = gr.File(label="Export", interactive=False, file_count="multiple", elem_id="ann-export-file")
    with gr.Accordion("Study setup: draw the stratified sample", open=False, visible=admin):
        with gr.Row():
            ui.fraction = gr.Slider(0.01, 1.0, value=DEFAULT_FRACTION, step=0.01, label="Fraction of each stratum")
            ui.sample_seed = gr.Number(0, precision=0, label="Sampling seed")
            ui.mark = gr.Button("Mark the stratified sample", size="sm")
    with gr.Row(visible=False):  # API-only: a click on the canvas at (x, y), for scripts and tests
        ui.api_x, ui.api_y = gr.Number(0), gr.Number(0)
        ui.api_click = gr.Button()
    return ui


def open_view(store_path, *, sample_id, annotator, mode=SELECT_MODE) -> OpenedView:
    """The sample on the canvas (none: a message), the queue menu, the progress."""
    annotator = annotator or ""
    queue = annotation.queue_ids(store_path, annotator)
    choices = queue if sample_id in queue or sample_id is None else [sample_id, *queue]
    progress = annotation.progress(store_path, annotator)
    if sample_id is None:
        message = "Queue empty: every sample is reviewed by you." if annotator.strip() else "Enter your name."
        return OpenedView(
            opened=None, canvas=None, info=message, queue=gr.update(choices=choices, value=None), progress=progress
        )
    opened = annotation.open_sample(store_path, sample_id)
    return OpenedView(
        **_view(opened, mode)._asdict(), queue=gr.update(choices=choices, value=sample_id), progress=progress
    )


def on_load(store_path, annotator, request=None, access: Access = DIRECT):
    try:
        annotator = access.name(annotator, request)
    except ValueError as error:
        raise user_error(error) from error
    queue = annotation.queue_ids(store_path, annotator)
    return open_view(store_path, sample_id=queue[0] if queue else None, annotator=annotator)


def on_open(store_path, annotator, sample_id):
    if not sample_id:
        return skipped(OpenedView)
    try:
        return open_view(store_path, sample_id=sample_id, annotator=annotator)
    except ValueError as error:
        raise user_error(error) from error


def on_save(store_path, decision, opened, annotator, mode, request=None, access: Access = DIRECT, shown=None):
    """Accept / reject: save the review (or a visible error, store unchanged), open the next.
    The name is checked first: who saves matters before what is saved. shown: the caption shown
    when the button was pressed (None from the API); a save meant for another sample is refused."""
    try:
        annotator = access.name(annotator, request)
    except ValueError as error:
        raise user_error(error) from error
    if opened is None:
        raise gr.Error("open a sample first")
    stale = _moved_on(opened, shown, act="press")
    if stale:
        raise gr.Error(stale)
    try:
        annotation.save(store_path, opened, annotator, decision)
    except (ValueError, VersionConflict) as error:
        raise user_error(error) from error
    gr.Info(f"{opened.draft.sample_id}: {decision}")
    queue = annotation.queue_ids(store_path, annotator)
    return open_view(store_path, sample_id=queue[0] if queue else None, annotator=annotator, mode=mode)


def on_click(opened, mode, x, y, shown=None):
    """A click at canvas (x, y); shown as in `_moved_on`."""
    return _soft(lambda o: annotation.click(o, mode, float(x), float(y)))(opened, mode, shown)


def on_report(store_path, sampled_only, access: Access = DIRECT) -> str:
    hint = DRAW_HINT_ADMIN if access.admin else DRAW_HINT_OTHERS
    with ReviewStore(store_path) as store:
        return report_markdown(store, bool(sampled_only), draw_hint=hint)


def draw_button(store_path, access: Access = DIRECT) -> dict:
    """The report's 'Draw the stratified sample' button: shown to admins while none is drawn."""
    with ReviewStore(store_path) as store:
        undrawn = store.stats().in_sample == 0
    return gr.update(visible=access.admin and undrawn)


def on_export(store_path, outputs_dir) -> str:
    """Export the accepted samples into a new folder of `outputs_dir`; the path of its JSON."""
    name = f"accepted-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"  # two in one second differ
    try:
        with ReviewStore(store_path) as store:
            path, count = export_accepted(store, Path(outputs_dir) / name)
    except ValueError as error:
        raise user_error(error) from error
    gr.Info(f"exported {count} accepted sample(s): {name}.zip holds accepted.json and the images it names")
    return str(path)


def export_downloads(json_path: str) -> list[str]:
    """What the page offers for an export: the archive of its folder (the JSON and its images,
    paths relative to the JSON) and the JSON alone."""
    return [str(archive(Path(json_path).parent)), json_path]


def location_text(store_path, outputs_dir) -> str:
    return (
        f"Review store: `{display_path(store_path)}` (the samples sent from the Attention tab beside it) · "
        f"exports go to `{display_path(outputs_dir)}`"
    )


def on_mark(store_path, fraction, seed, annotator, request=None, access: Access = DIRECT):
    """Re-draw the stratified sample: admins only, under a checked name (never an anonymous one)."""
    try:
        access.check_admin()
        actor = access.name(annotator, request)
        with ReviewStore(store_path) as store:
            chosen = stratified_sample(store.sample_strata(), float(fraction), int(seed or 0))
            store.mark_sampled(chosen, actor=actor, params={"fraction": float(fraction), "seed": int(seed or 0)})
    except ValueError as error:
        raise user_error(error) from error
    gr.Info(f"{len(chosen)} sample(s) are now the stratified sample")
    return annotation.progress(store_path, actor)


def wire(ui: SimpleNamespace, *, store_path: Path, outputs_dir: Path, access: Access = DIRECT) -> None:
    """access: the app's admin setting and annotator names (the handlers also get the
    gr.Request, whose username is the login under gradio auth)."""
    view, opened = components(DraftView, ui), components(OpenedView, ui)
    # Set before the page is served: the tab says where its data lives from the first look.
    ui.location.value = location_text(store_path, outputs_dir)
    _wire_sample(ui, store_path=store_path, access=access, view=view, opened=opened)
    _wire_report(ui, store_path=store_path, outputs_dir=outputs_dir, access=access)


def _wire_sample(ui, *, store_path: Path, access: Access, view: list, opened: list) -> None:
    """The events on the opened sample, all in the EVENTS queue (module docstring)."""
    quick = {**ORDERED, "trigger_mode": "multiple", "show_progress": "hidden"}
    opening = {**ORDERED, "show_progress_on": [ui.info]}  # never over the canvas: it takes clicks meanwhile

    def on_select(opened, mode, shown, evt: gr.SelectData):
        return on_click(opened, mode, *evt.index, shown)

    def load(annotator, request: gr.Request):
        return on_load(store_path, annotator, request, access)

    def saver(decision):
        def save(opened, annotator, mode, shown=None, request: gr.Request = None):
            return on_save(store_path, decision, opened, annotator, mode, request, access, shown=shown)

        return save

    ui.load.click(load, ui.annotator, opened, api_name="annotate_load", **opening)
    ui.annotator.submit(load, ui.annotator, opened, api_visibility="private", **opening)
    ui.queue.input(
        lambda annotator, sample_id: on_open(store_path, annotator, sample_id),
        [ui.annotator, ui.queue],
        opened,
        api_name="annotate_open",
        **opening,
    )
    ui.canvas.select(on_select, [ui.opened, ui.mode, ui.info], view, api_visibility="private", **quick)
    ui.api_click.click(on_click, [ui.opened, ui.mode, ui.api_x, ui.api_y], view, api_name="annotate_click", **quick)
    ui.mode.input(
        lambda o, m: DraftView(opened=o, canvas=gr.skip(), info=annotation.describe(o, m) if o else ""),
        [ui.opened, ui.mode],
        view,
        api_name="annotate_mode",
        **quick,
    )
    actions = {  # button: (api name, Draft method, its arguments)
        ui.prev: ("annotate_previous", "step", -1),
        ui.next: ("annotate_next", "step", 1),
        ui.correct: ("annotate_correct", "judge", "correct"),
        ui.wrong: ("annotate_wrong", "judge", "wrong"),
        ui.unsure: ("annotate_unsure", "judge", "unsure"),
        ui.all_correct: ("annotate_all_correct", "judge_remaining", "correct"),
        ui.delete: ("annotate_delete", "delete"),
        ui.undo: ("annotate_undo", "undo"),
    }
    for button, (name, method, *args) in actions.items():
        button.click(_draft_action(method, *args), [ui.opened, ui.mode, ui.info], view, api_name=name, **quick)
    for button, decision in ((ui.accept, Decision.ACCEPTED.value), (ui.reject, Decision.REJECTED.value)):
        button.click(
            saver(decision),
            [ui.opened, ui.annotator, ui.mode, ui.info],
            opened,
            api_name=f"annotate_{decision}",
            **opening,
        )


def _wire_report(ui, *, store_path: Path, outputs_dir: Path, access: Access) -> None:
    """The report (shown when its panel opens, refreshed on demand), the draw button, export."""

    def report(sampled_only):
        return on_report(store_path, sampled_only, access)

    def button():
        return draw_button(store_path, access)

    def mark(fraction, seed, annotator, request: gr.Request):
        return on_mark(store_path, fraction, seed, annotator, request, access)

    def show_report(event, **kwargs):
        event(report, ui.sampled_only, ui.report, **kwargs).then(button, None, ui.draw, api_visibility="private")

    show_report(ui.refresh.click, api_name="annotate_report")
    show_report(ui.sampled_only.input, api_visibility="private")
    show_report(ui.report_box.expand, api_visibility="private")
    for trigger, name in ((ui.mark, "annotate_mark_sample"), (ui.draw, None)):
        extra = {"api_name": name} if name else {"api_visibility": "private"}
        trigger.click(mark, [ui.fraction, ui.sample_seed, ui.annotator], ui.progress, **extra).success(
            report, ui.sampled_only, ui.report, api_visibility="private"
        ).then(button, None, ui.draw, api_visibility="private")
    ui.export.click(
        lambda: export_downloads(on_export(store_path, outputs_dir)), None, ui.export_file, api_name="annotate_export"
    )
