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


def test_a_verdict_moves_on_to_the_next_unjudged_pair_and_undo_comes_back():
    draft = Draft.from_sample(sample(points_per_ref=3)).select(3).judge("wrong")
    assert draft.pair(3).verdict == "wrong" and draft.selected == 4
    draft = draft.select(6).judge("correct")
    assert draft.selected == 1  # after the last pair: round to the first still unjudged
    draft = draft.judge("unsure")
    assert draft.selected == 2  # 1 judged now, so on to 2, skipping nothing judged
    back = draft.undo()
    assert back.selected == 1 and back.pair(1).verdict is None  # one step: verdict and selection
    draft = draft.judge_remaining("correct").select(5).judge("wrong")
    assert draft.selected == 5 and draft.pair(5).verdict == "wrong"  # nothing left: it stays
    assert Draft.from_sample(sample()).select(2).step(1).selected == 3  # n / p still move without judging


def test_a_verdict_skips_pairs_added_in_this_review():
    draft = Draft.from_sample(sample(refs=1)).start_pair(0, (1.0, 1.0)).finish_pair((2.0, 2.0))
    draft = draft.select(1).judge("correct")
    assert draft.selected == 2  # pair 3 (added) needs no verdict
    assert draft.judge("correct").selected == 2  # the last unjudged one: nothing left, it stays


def _adds_up(draft: Draft) -> bool:
    c = draft.counts()
    return c["pairs"] == c["judged"] + c["to judge"] + c["added"] == len(draft.visible())


def test_counts_add_up_after_deleting_moving_and_adding():
    draft = Draft.from_sample(sample(refs=2, points_per_ref=9))  # 18 pairs, as in the report
    draft = draft.select(1).judge("correct").select(2).delete()
    assert draft.counts() == {"pairs": 17, "judged": 1, "to judge": 16, "added": 0, "moved": 0, "deleted": 1}
    steps = [
        lambda d: d.select(4).move(target_xy=(1.0, 1.0)),
        lambda d: d.start_pair(1, (3.0, 3.0)).finish_pair((4.0, 4.0)),
        lambda d: d.select(19).delete(),  # the added pair: gone without a verdict, not "deleted"
        lambda d: d.judge_remaining("unsure"),
    ]
    for step in steps:
        draft = step(draft)
        assert _adds_up(draft), draft.counts()
    assert draft.counts() == {"pairs": 17, "judged": 17, "to judge": 0, "added": 0, "moved": 1, "deleted": 1}


def test_the_counts_line_says_what_adds_up():
    from mosaic_studio.studio.annotation import counts_line

    draft = Draft.from_sample(sample(refs=2, points_per_ref=9)).select(1).judge("correct").select(2).delete()
    assert counts_line(draft) == (
        "17 pairs: 1 judged · 16 to judge · 0 added — 0 moved · 1 deleted (judged wrong, off the canvas)"
    )
