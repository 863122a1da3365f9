"""Records of the review store and the checks on them that need no database.

These are the store's own plain dataclasses; the project's data-format module converts its
samples to and from them. Coordinates are pixels, (x, y) from the image's top-left corner.
Every check raises ValueError naming the sample, the point and the rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from enum import Enum

from mosaic_studio.annotator.verify import Stratum, stratum_of

XY = tuple[float, float]  # (x, y) in pixels of the image it belongs to
# The category of a reference whose category nobody gave: its own stratum, never folded into a
# real one (the error rate of "object" must not silently include cats and people).
UNKNOWN_CATEGORY = "unknown"


class SampleStatus(str, Enum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


class Decision(str, Enum):
    """A review's outcome; it becomes the sample's status (the latest review wins)."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"


class PointStatus(str, Enum):
    PROPOSED = "proposed"  # as the automatic pipeline proposed it, not reviewed yet
    KEPT = "kept"  # reviewed and left where it was
    MOVED = "moved"
    ADDED = "added"  # created by an annotator
    DELETED = "deleted"  # kept in the table for the audit trail; no longer judged or exported


class EditAction(str, Enum):
    MOVE = "move"
    ADD = "add"
    DELETE = "delete"


@dataclass(frozen=True)
class ReferenceRecord:
    index: int  # 0-based, in the order ref_1 … ref_K of the forward's branches (docs/DESIGN.md §1)
    image_path: str
    category: str


@dataclass(frozen=True)
class PointRecord:
    ref_index: int
    point_index: int
    ref_xy: XY  # current position in the reference image
    target_xy: XY  # current position in the target image
    source: str  # who proposed it, e.g. "dift+dino", or "annotator"
    confidence: float | None = None
    status: PointStatus = PointStatus.PROPOSED
    proposed_ref_xy: XY | None = None  # as first proposed; None for points an annotator added
    proposed_target_xy: XY | None = None


@dataclass(frozen=True)
class SampleRecord:
    sample_id: str
    caption: str
    target_path: str
    references: tuple[ReferenceRecord, ...]
    points: tuple[PointRecord, ...]
    # Set by the store; a new sample leaves them at their defaults.
    status: SampleStatus = SampleStatus.PENDING
    version: int = 0  # number of saved reviews; the optimistic-lock token
    in_sample: bool = False  # chosen for the stratified verification sample
    created_at: str | None = None
    updated_at: str | None = None

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(reference.category for reference in self.references)

    @property
    def stratum(self) -> Stratum:
        return stratum_of(self.categories)

    @classmethod
    def from_dict(cls, data: Mapping) -> SampleRecord:
        """Build from plain dicts (nested references / points); unknown keys are an error."""
        values = _known_keys(cls, data)
        values["references"] = tuple(
            ReferenceRecord(**_known_keys(ReferenceRecord, item)) for item in data.get("references", ())
        )
        values["points"] = tuple(_point_from_dict(item) for item in data.get("points", ()))
        return cls(**values)


def _known_keys(cls, data: Mapping) -> dict:
    unknown = set(data) - {field.name for field in fields(cls)}
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {sorted(unknown)}")
    return dict(data)


def _point_from_dict(data: Mapping) -> PointRecord:
    values = _known_keys(PointRecord, data)
    for key in ("ref_xy", "target_xy", "proposed_ref_xy", "proposed_target_xy"):
        if values.get(key) is not None:
            values[key] = tuple(values[key])  # JSON gives lists
    return PointRecord(**values)


@dataclass(frozen=True)
class PointEdit:
    """One change an annotator makes; build it with `move`, `add` or `delete`."""

    action: EditAction
    ref_index: int
    point_index: int | None = None  # None for ADD: the store assigns the next free index
    ref_xy: XY | None = None  # new position, for MOVE and ADD
    target_xy: XY | None = None

    @classmethod
    def move(cls, ref_index: int, point_index: int, ref_xy: XY, target_xy: XY) -> PointEdit:
        return cls(EditAction.MOVE, ref_index, point_index, tuple(ref_xy), tuple(target_xy))

    @classmethod
    def add(cls, ref_index: int, ref_xy: XY, target_xy: XY) -> PointEdit:
        return cls(EditAction.ADD, ref_index, None, tuple(ref_xy), tuple(target_xy))

    @classmethod
    def delete(cls, ref_index: int, point_index: int) -> PointEdit:
        return cls(EditAction.DELETE, ref_index, point_index)


@dataclass(frozen=True)
class SavedReview:
    review_id: int
    version: int  # the sample's new version: the expected_version of a next save
    added: tuple[tuple[int, int], ...]  # (ref_index, point_index) given to each ADD, in order


@dataclass(frozen=True)
class StoreStats:
    samples: int
    by_status: dict[str, int]
    in_sample: int
    sampled_reviewed: int  # samples of the stratified sample with at least one review
    reviews: int
    doubly_reviewed: int  # samples reviewed by two or more distinct annotators
    points_by_status: dict[str, int]


# --- checks -----------------------------------------------------------------------------------


def check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    return value


def check_index(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be an int >= 0, got {value!r}")
    return value


def check_xy(value: object, what: str) -> XY:
    # Pixels from the top-left corner, so a negative coordinate lies outside the image. The upper
    # bound needs the image size, which the data-format module checks when it loads a sample.
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        or not all(math.isfinite(v) and v >= 0 for v in value)
    ):
        raise ValueError(f"{what} must be two finite pixel coordinates >= 0, got {value!r}")
    return (float(value[0]), float(value[1]))


def check_enum(enum: type[Enum], value: object, what: str) -> Enum:
    allowed = [member.value for member in enum]
    if value not in allowed:
        raise ValueError(f"{what} {value!r} is not one of {allowed}")
    return enum(value)


def check_new_sample(record: SampleRecord) -> SampleRecord:
    """Check a sample for `add_sample`; returns it with coordinates as float tuples."""
    sid = check_name(record.sample_id, "sample_id")
    check_name(record.target_path, f"sample {sid!r}: target_path")
    if not isinstance(record.caption, str):
        raise ValueError(f"sample {sid!r}: caption must be a string")
    if (record.status, record.version, record.in_sample, record.created_at, record.updated_at) != (
        SampleStatus.PENDING,
        0,
        False,
        None,
        None,
    ):
        raise ValueError(
            f"sample {sid!r}: add_sample takes a new, unreviewed sample; status, "
            "version, in_sample and timestamps are set by the store"
        )
    indices = [reference.index for reference in record.references]
    if not indices or indices != list(range(len(indices))):
        raise ValueError(f"sample {sid!r}: reference indices must be 0..K-1 in order with K >= 1, got {indices}")
    for reference in record.references:
        check_name(reference.image_path, f"sample {sid!r}: reference {reference.index} path")
        check_name(reference.category, f"sample {sid!r}: reference {reference.index} category")
    points, keys = [], set()
    for point in record.points:
        key = (
            check_index(point.ref_index, f"sample {sid!r}: ref_index"),
            check_index(point.point_index, f"sample {sid!r}: point_index"),
        )
        where = f"sample {sid!r}: point {key}"
        if point.ref_index >= len(indices):
            raise ValueError(f"{where}: no reference {point.ref_index} (K = {len(indices)})")
        if key in keys:
            raise ValueError(f"{where} appears twice")
        keys.add(key)
        ref_xy = check_xy(point.ref_xy, f"{where}: ref_xy")
        target_xy = check_xy(point.target_xy, f"{where}: target_xy")
        check_name(point.source, f"{where}: source")
        if point.confidence is not None and not math.isfinite(point.confidence):
            raise ValueError(f"{where}: confidence must be finite or None")
        if (
            point.status != PointStatus.PROPOSED
            or point.proposed_ref_xy not in (None, point.ref_xy)
            or point.proposed_target_xy not in (None, point.target_xy)
        ):
            raise ValueError(
                f"{where}: a new sample's points are proposals (status 'proposed', "
                "proposed coordinates equal to the current ones)"
            )
        points.append(replace(point, ref_xy=ref_xy, target_xy=target_xy))
    return replace(record, points=tuple(points))


def check_edit(edit: PointEdit) -> PointEdit:
    """Check one edit on its own; returns it with its action an EditAction and float tuples."""
    action = check_enum(EditAction, edit.action, "edit action")
    check_index(edit.ref_index, "edit ref_index")
    if action == EditAction.ADD:
        if edit.point_index is not None:
            raise ValueError("an add edit gets its point_index from the store; pass None")
    else:
        check_index(edit.point_index, f"{action.value} edit point_index")
    if action == EditAction.DELETE:
        if edit.ref_xy is not None or edit.target_xy is not None:
            raise ValueError("a delete edit takes no coordinates")
        return replace(edit, action=action)
    return replace(
        edit,
        action=action,
        ref_xy=check_xy(edit.ref_xy, f"{action.value} edit ref_xy"),
        target_xy=check_xy(edit.target_xy, f"{action.value} edit target_xy"),
    )
