"""The annotator's draft of one review, as immutable values: every action returns a new
`Draft` that remembers the previous one, so undo is one step back and nothing touches the
store until `review()` turns the draft into the verdicts and edits of `save_review`.

Rules of the study (annotator.store.save_review): every point that is live in the store gets a
verdict judging it where it was shown, before this review's edits. Moving a point therefore
judges its old position wrong, and so does deleting it; the annotator can still change that
verdict. Points added in this review are new, not judged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from mosaic_studio.annotator.records import PointEdit, PointStatus, SampleRecord
from mosaic_studio.studio.drawing import DrawnPair

VERDICTS = ("correct", "wrong", "unsure")
XY = tuple[float, float]


@dataclass(frozen=True)
class Pair:
    ref_index: int
    ref_xy: XY
    target_xy: XY
    point_index: int | None = None  # the store's index; None for a pair added in this review
    shown: tuple[XY, XY] | None = None  # (ref_xy, target_xy) as loaded; None when added
    verdict: str | None = None
    deleted: bool = False

    @property
    def added(self) -> bool:
        return self.point_index is None

    @property
    def moved(self) -> bool:
        return self.shown is not None and (self.ref_xy, self.target_xy) != self.shown


@dataclass(frozen=True)
class Draft:
    sample_id: str
    version: int  # the store version this draft is based on (save_review's expected_version)
    num_refs: int
    pairs: tuple[Pair, ...]
    selected: int | None = None  # a pair number (1-based)
    pending: tuple[int, XY] | None = None  # add mode: (reference, point) awaiting its target
    previous: Draft | None = field(default=None, repr=False, compare=False)  # the undo chain
    opened_at: float = field(default_factory=time.monotonic, compare=False)

    @classmethod
    def from_sample(cls, sample: SampleRecord) -> Draft:
        live = [p for p in sample.points if p.status != PointStatus.DELETED]
        pairs = tuple(
            Pair(p.ref_index, tuple(p.ref_xy), tuple(p.target_xy), p.point_index, (tuple(p.ref_xy), tuple(p.target_xy)))
            for p in live
        )
        return cls(sample.sample_id, sample.version, len(sample.references), pairs, selected=1 if pairs else None)

    # --- reading ---

    def pair(self, number: int) -> Pair:
        if not 1 <= number <= len(self.pairs) or self.pairs[number - 1].deleted:
            raise ValueError(f"there is no pair {number}")
        return self.pairs[number - 1]

    def visible(self) -> list[DrawnPair]:
        return [
            DrawnPair(i + 1, p.ref_index, p.ref_xy, p.target_xy, p.verdict)
            for i, p in enumerate(self.pairs)
            if not p.deleted
        ]

    def unjudged(self) -> list[int]:
        """Numbers of the pairs that still need a verdict."""
        return [i + 1 for i, p in enumerate(self.pairs) if not p.added and p.verdict is None]

    def counts(self) -> dict[str, int]:
        """The pairs on the canvas and what is left to do. The first three add up to "pairs":
        every live pair is judged, still to judge, or added in this review (added pairs are not
        judged). "deleted" counts the proposed pairs removed in this review, off the canvas and
        so outside "pairs"; each is judged wrong where it was shown, which the save records."""
        live = [p for p in self.pairs if not p.deleted]
        return {
            "pairs": len(live),
            "judged": sum(not p.added and p.verdict is not None for p in live),
            "to judge": len(self.unjudged()),
            "added": sum(p.added for p in live),
            "moved": sum(p.moved for p in live),
            "deleted": sum(p.deleted and not p.added for p in self.pairs),
        }

    def next_unjudged(self, after: int | None) -> int | None:
        """The first pair needing a verdict after pair `after` (wrapping round), or None."""
        waiting = self.unjudged()
        if not waiting:
            return None
        return next((number for number in waiting if after is None or number > after), waiting[0])

    # --- actions: each returns a new draft ---

    def _then(self, **changes) -> Draft:
        return replace(self, previous=self, **changes)

    def _set(self, number: int, **changes) -> tuple[Pair, ...]:
        pairs = list(self.pairs)
        pairs[number - 1] = replace(self.pair(number), **changes)
        return tuple(pairs)

    def _selected(self) -> int:
        if self.selected is None:
            raise ValueError("select a pair first: click one of its points")
        return self.selected

    def select(self, number: int | None) -> Draft:
        if number is not None:
            self.pair(number)
        return replace(self, selected=number, pending=None)  # selection is not an edit: no undo step

    def step(self, offset: int) -> Draft:
        """Select the next (offset 1) or previous (−1) visible pair, wrapping around."""
        numbers = [p.number for p in self.visible()]
        if not numbers:
            raise ValueError("this sample has no pairs left")
        position = numbers.index(self.selected) + offset if self.selected in numbers else 0
        return self.select(numbers[position % len(numbers)])

    def move(self, ref_xy: XY | None = None, target_xy: XY | None = None) -> Draft:
        """Move an end of the selected pair; a point from the store is then judged wrong."""
        number = self._selected()
        pair = self.pair(number)
        changes = {"ref_xy": tuple(ref_xy or pair.ref_xy), "target_xy": tuple(target_xy or pair.target_xy)}
        if not pair.added:
            changes["verdict"] = "wrong"
        return self._then(pairs=self._set(number, **changes))

    def delete(self) -> Draft:
        number = self._selected()
        pairs = self._set(number, deleted=True, verdict=None if self.pair(number).added else "wrong")
        return self._then(pairs=pairs, selected=None)

    def judge(self, verdict: str) -> Draft:
        if verdict not in VERDICTS:
            raise ValueError(f"verdict {verdict!r} is not one of {VERDICTS}")
        number = self._selected()
        if self.pair(number).added:
            raise ValueError(f"pair {number} was added in this review; only proposed points are judged")
        judged = replace(self, pairs=self._set(number, verdict=verdict))
        # On to the next pair needing a verdict, as review tools do; once none is left the judged
        # pair stays selected. One undo step puts back the verdict and the selection together.
        following = judged.next_unjudged(number)
        return self._then(pairs=judged.pairs, selected=number if following is None else following, pending=None)

    def judge_remaining(self, verdict: str) -> Draft:
        if verdict not in VERDICTS:
            raise ValueError(f"verdict {verdict!r} is not one of {VERDICTS}")
        pairs = tuple(replace(p, verdict=verdict) if not p.added and p.verdict is None else p for p in self.pairs)
        return self._then(pairs=pairs)

    def start_pair(self, ref_index: int, ref_xy: XY) -> Draft:
        if not 0 <= ref_index < self.num_refs:
            raise ValueError(f"there is no reference {ref_index + 1}")
        return self._then(pending=(ref_index, tuple(ref_xy)))

    def finish_pair(self, target_xy: XY) -> Draft:
        if self.pending is None:
            raise ValueError("to add a pair, click its point on a reference first, then on the generated image")
        ref_index, ref_xy = self.pending
        pairs = self.pairs + (Pair(ref_index, ref_xy, tuple(target_xy)),)
        return self._then(pairs=pairs, pending=None, selected=len(pairs))

    def undo(self) -> Draft:
        if self.previous is None:
            raise ValueError("nothing to undo")
        return self.previous

    # --- the save ---

    def review(self) -> tuple[dict[tuple[int, int], str], list[PointEdit]]:
        """(verdicts, edits) for `ReviewStore.save_review`; ValueError while a pair is unjudged."""
        missing = self.unjudged()
        if missing:
            listed = ", ".join(map(str, missing[:12])) + (" …" if len(missing) > 12 else "")
            raise ValueError(
                f"{len(missing)} pair(s) still need a verdict: {listed}. "
                "Judge them (c / w / u) or press 'All remaining correct'."
            )
        verdicts, edits = {}, []
        for p in self.pairs:
            if p.added:
                if not p.deleted:
                    edits.append(PointEdit.add(p.ref_index, p.ref_xy, p.target_xy))
                continue
            verdicts[(p.ref_index, p.point_index)] = p.verdict
            if p.deleted:
                edits.append(PointEdit.delete(p.ref_index, p.point_index))
            elif p.moved:
                edits.append(PointEdit.move(p.ref_index, p.point_index, p.ref_xy, p.target_xy))
        return verdicts, edits

    def duration(self) -> float:
        return max(0.0, time.monotonic() - self.opened_at)
