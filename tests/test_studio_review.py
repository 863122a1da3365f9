"""The annotator's draft (studio.review) and saving it to a real review store (studio.annotate)."""

import pytest

from mosaic_studio.annotator.records import (
    EditAction,
    PointRecord,
    PointStatus,
    ReferenceRecord,
    SampleRecord,
    SampleStatus,
)
from mosaic_studio.annotator.store import ReviewStore, VersionConflict
from mosaic_studio.studio.review import Draft


def sample(sample_id="s1", refs=2, points_per_ref=2) -> SampleRecord:
    references = tuple(ReferenceRecord(k, f"ref_{k}.png", "object") for k in range(refs))
    points = tuple(
        PointRecord(k, i, (10.0 + i, 20.0 + k), (30.0 + i, 40.0 + k), "test")
        for k in range(refs)
        for i in range(points_per_ref)
    )
    return SampleRecord(sample_id, "a caption", "target.png", references, points)


def test_from_sample_selects_the_first_pair_and_skips_deleted_points():
    draft = Draft.from_sample(sample())
    assert draft.selected == 1 and len(draft.visible()) == 4 and draft.unjudged() == [1, 2, 3, 4]


def test_move_judges_the_shown_position_wrong_and_becomes_a_move_edit():
    draft = Draft.from_sample(sample()).select(2).move(target_xy=(50.0, 60.0))
    draft = draft.judge_remaining("correct")
    verdicts, edits = draft.review()
    assert verdicts[(0, 1)] == "wrong" and verdicts[(0, 0)] == "correct"
    assert [(e.action, e.ref_index, e.point_index, e.target_xy) for e in edits] == [
        (EditAction.MOVE, 0, 1, (50.0, 60.0))
    ]
    assert edits[0].ref_xy == (11.0, 20.0)  # the other end stays


def test_delete_add_and_undo():
    draft = Draft.from_sample(sample()).select(3).delete()
    assert draft.selected is None and [p.number for p in draft.visible()] == [1, 2, 4]
    draft = draft.start_pair(1, (5.0, 6.0)).finish_pair((7.0, 8.0))
    assert draft.selected == 5 and draft.counts()["added"] == 1
    assert draft.undo().counts()["added"] == 0 and draft.undo().pending == (1, (5.0, 6.0))
    verdicts, edits = draft.judge_remaining("unsure").review()
    assert verdicts[(1, 0)] == "wrong"  # the deleted point's shown position
    assert sorted(e.action.value for e in edits) == ["add", "delete"]


def test_judging_needs_a_selection_and_a_valid_verdict():
    draft = Draft.from_sample(sample()).select(None)
    with pytest.raises(ValueError, match="select a pair first"):
        draft.judge("correct")
    with pytest.raises(ValueError, match="not one of"):
        draft.select(1).judge("maybe")
    with pytest.raises(ValueError, match="reference first"):
        draft.finish_pair((1.0, 1.0))
    with pytest.raises(ValueError, match="nothing to undo"):
        draft.undo()


def test_review_refuses_unjudged_pairs_by_number():
    draft = Draft.from_sample(sample()).judge("correct")
    with pytest.raises(ValueError, match=r"3 pair\(s\) still need a verdict: 2, 3, 4"):
        draft.review()


def test_step_wraps_over_visible_pairs():
    draft = Draft.from_sample(sample()).select(4)
    assert draft.step(1).selected == 1 and draft.step(-1).selected == 3


def test_saved_draft_changes_the_store_and_a_stale_draft_conflicts(tmp_path):
    from mosaic_studio.studio.annotation import Opened, save

    path = tmp_path / "store.db"
    with ReviewStore(path) as store:
        store.add_sample(sample())
    first = Draft.from_sample(sample()).move(target_xy=(1.0, 2.0)).judge_remaining("correct")
    stale = Draft.from_sample(sample()).judge_remaining("correct")  # opened at the same version
    save(path, Opened(first, None, None, ""), "ann", "accepted")
    with ReviewStore(path) as store:
        before = (store.stats(), store.get_sample("s1"))
    with pytest.raises(VersionConflict, match="changed by another review"):
        save(path, Opened(stale, None, None, ""), "other", "rejected")
    with pytest.raises(ValueError, match="annotator name"):
        save(path, Opened(stale, None, None, ""), " ", "rejected")
    with ReviewStore(path) as store:
        assert (store.stats(), store.get_sample("s1")) == before
        saved = store.get_sample("s1")
    assert saved.status == SampleStatus.ACCEPTED and saved.version == 1
    assert [p.status for p in saved.points].count(PointStatus.MOVED) == 1


def test_canvas_clicks_select_move_and_add():
    from mosaic_studio.studio.annotation import ADD_MODE, SELECT_MODE, Opened, click
    from mosaic_studio.studio.canvas import REFERENCE, TARGET, review_layout

    layout = review_layout([(64, 64), (64, 64)], (64, 64))
    opened = Opened(Draft.from_sample(sample()), layout, None, "")
    at = lambda kind, index, xy: layout.panel(kind, index).to_canvas(xy)  # noqa: E731
    selected = click(opened, SELECT_MODE, *at(TARGET, 0, (29.6, 41.0)))  # nearest: pair 3, its target (30, 41)
    assert selected.draft.selected == 3
    moved = click(selected, SELECT_MODE, *at(TARGET, 0, (60.0, 5.0)))
    assert moved.draft.pair(3).target_xy == pytest.approx((60.0, 5.0)) and moved.draft.pair(3).verdict == "wrong"
    with pytest.raises(ValueError, match="belongs to reference 2"):
        click(selected, SELECT_MODE, *at(REFERENCE, 0, (60.0, 60.0)))
    with pytest.raises(ValueError, match="between the images"):
        click(selected, SELECT_MODE, 0, 0)
    started = click(opened, ADD_MODE, *at(REFERENCE, 1, (50.0, 50.0)))
    added = click(started, ADD_MODE, *at(TARGET, 0, (5.0, 60.0)))
    assert added.draft.pair(5).ref_index == 1 and added.draft.pair(5).added
    assert added.draft.pair(5).target_xy == pytest.approx((5.0, 60.0))
