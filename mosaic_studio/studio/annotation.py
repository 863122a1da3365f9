"""The Annotate tab's logic, without Gradio: open a store sample as a draft on the review
canvas, interpret clicks, save the review, and the progress line."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from mosaic_studio.annotator.records import UNKNOWN_CATEGORY, SampleRecord
from mosaic_studio.annotator.store import ReviewStore
from mosaic_studio.studio.canvas import REFERENCE, TARGET, Layout, compose, review_layout
from mosaic_studio.studio.drawing import draw_pairs, nearest_pair
from mosaic_studio.studio.review import Draft
from mosaic_studio.studio.store_files import open_image

SELECT_MODE = "Select / move"
ADD_MODE = "Add pair (reference, then target)"
MODES = (SELECT_MODE, ADD_MODE)
QUEUE_SHOWN = 500  # sample ids offered in the queue menu


@dataclass(frozen=True)
class Opened:
    """A sample on the review canvas: the draft and what is needed to draw it."""

    draft: Draft
    layout: Layout
    base: Image.Image  # the references and the target, without pairs
    caption: str


def open_sample(store_path: str | Path, sample_id: str) -> Opened:
    """Load a sample and its images; ValueError naming a missing sample or image."""
    with ReviewStore(store_path) as store:
        sample = store.get_sample(sample_id)
    reference_images = [
        open_image(store_path, r.image_path, f"sample {sample_id!r} reference {r.index + 1}") for r in sample.references
    ]
    target = open_image(store_path, sample.target_path, f"sample {sample_id!r} target")
    layout = review_layout([r.size for r in reference_images], target.size)
    images = {(REFERENCE, i): image for i, image in enumerate(reference_images)}
    base = compose(layout, {**images, (TARGET, 0): target})
    caption = (
        f"**{sample_id}** · “{sample.caption}” · {', '.join(sample.categories)} · status {sample.status.value}, "
        f"version {sample.version}{' · in the stratified sample' if sample.in_sample else ''}"
        f"{missing_categories(sample)}"
    )
    return Opened(Draft.from_sample(sample), layout, base, caption)


def missing_categories(sample: SampleRecord) -> str:
    """A line asking for the categories nobody gave (empty when every reference has one)."""
    missing = [str(r.index + 1) for r in sample.references if r.category == UNKNOWN_CATEGORY]
    if not missing:
        return ""
    return (
        f"\n\n⚠ No category was given for reference {', '.join(missing)}: its stratum says "
        f"“{UNKNOWN_CATEGORY}”. Give one category per reference (Generate → Subject categories) "
        "before sending samples to Annotate."
    )


def counts_line(draft: Draft) -> str:
    """`17 pairs: 1 judged · 16 to judge · 0 added` (these add up), then the edits."""
    c = draft.counts()
    return (
        f"{c['pairs']} pairs: {c['judged']} judged · {c['to judge']} to judge · {c['added']} added"
        f" — {c['moved']} moved · {c['deleted']} deleted (judged wrong, off the canvas)"
    )


def render(opened: Opened) -> Image.Image:
    d = opened.draft
    return draw_pairs(opened.base, opened.layout, d.visible(), d.selected, d.pending)


def describe(opened: Opened, mode: str = SELECT_MODE) -> str:
    """The line under the canvas: the selected pair, the counts, what a click does now."""
    d = opened.draft
    if d.pending is not None:
        selected = f"Adding a pair: reference {d.pending[0] + 1} point set; click its target on the generated image."
    elif d.selected is not None:
        p = d.pair(d.selected)
        state = (
            "added in this review" if p.added else f"verdict **{p.verdict or '—'}**" + (" (moved)" if p.moved else "")
        )
        selected = (
            f"Pair **{d.selected}** · reference {p.ref_index + 1} ({p.ref_xy[0]:.0f}, {p.ref_xy[1]:.0f}) → "
            f"target ({p.target_xy[0]:.0f}, {p.target_xy[1]:.0f}) · {state}"
        )
    else:
        selected = "No pair selected: click a point."
    hint = (
        "Click a reference point, then its target."
        if mode == ADD_MODE
        else "Click a point to select its pair; click the generated image to move the selected pair's target "
        "(or its own reference to move the reference point)."
    )
    return f"{opened.caption}\n\n{selected}\n\n{counts_line(d)}\n\n_{hint}_"


def click(opened: Opened, mode: str, x: float, y: float) -> Opened:
    """Apply a click at canvas (x, y) in `mode`; ValueError explains a click that does nothing."""
    draft, hit = opened.draft, opened.layout.locate(x, y)
    if mode == ADD_MODE:
        if hit is None:
            raise ValueError("click on a reference or on the generated image")
        panel, xy = hit
        draft = draft.start_pair(panel.index, xy) if panel.kind == REFERENCE else draft.finish_pair(xy)
        return replace(opened, draft=draft)
    number = nearest_pair(opened.layout, draft.visible(), x, y)
    if number is not None:
        return replace(opened, draft=draft.select(number))
    if hit is None:
        raise ValueError("that click fell between the images")
    if draft.selected is None:
        raise ValueError("click near a point to select its pair first")
    panel, xy = hit
    pair = draft.pair(draft.selected)
    if panel.kind == TARGET:
        return replace(opened, draft=draft.move(target_xy=xy))
    if panel.index == pair.ref_index:
        return replace(opened, draft=draft.move(ref_xy=xy))
    raise ValueError(
        f"pair {draft.selected} belongs to reference {pair.ref_index + 1}: click inside it to move the "
        "reference point, or on the generated image to move the target point"
    )


def save(store_path: str | Path, opened: Opened, annotator: str, decision: str):
    """Save the draft as one review. ValueError for an incomplete review, VersionConflict
    when someone saved this sample since it was opened; the store is unchanged in both cases."""
    if not (annotator or "").strip():
        raise ValueError("enter your annotator name before saving")
    verdicts, edits = opened.draft.review()
    with ReviewStore(store_path) as store:
        return store.save_review(
            opened.draft.sample_id,
            annotator.strip(),
            opened.draft.version,
            verdicts=verdicts,
            decision=decision,
            edits=edits,
            duration_s=opened.draft.duration(),
        )


def queue_ids(store_path: str | Path, annotator: str) -> list[str]:
    with ReviewStore(store_path) as store:
        return store.queue(annotator.strip(), limit=QUEUE_SHOWN)


def progress(store_path: str | Path, annotator: str) -> str:
    """'Sample n of N' for this annotator, and the stratified sample's coverage."""
    with ReviewStore(store_path) as store:
        stats = store.stats()
        left = len(store.queue(annotator.strip()))
    done = stats.samples - left
    who = annotator.strip() or "(no annotator name yet)"
    if left:
        position = f"Sample **{done + 1} of {stats.samples}**"
    else:
        position = f"All **{stats.samples}** samples reviewed"
    if stats.in_sample:
        sample = f"stratified sample: {stats.sampled_reviewed} of {stats.in_sample} reviewed"
    else:
        sample = "no stratified sample drawn yet"
    return f"{position} · {done} reviewed by {who} · {sample}"
