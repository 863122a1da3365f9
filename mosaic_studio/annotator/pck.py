"""PCK of proposed correspondences against the synthetic world's exact geometry.

A synthetic sample (train.synthetic) stores, per reference, the affine maps from the subject's
local frame to the target and to the reference (meta["subjects"]). A proposed pair (u, v) is
scored by carrying u through them into the target, v_true = T_target(T_reference⁻¹(u)), and
measuring |v_true − v| in target pixels:

  PCK@0.1      |v_true − v| <= 0.1 · max side of the target subject's box (its mask's box)
  PCK@1-token  |v_true − v| <= one token (token_size pixels)

This is the usual semantic-correspondence PCK (error in the image where the point lands,
threshold relative to the object there).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mosaic_studio.mosaic.data.semalign import Sample

PCK_ALPHA = 0.1


def true_target_points(subject: dict, ref_points: np.ndarray) -> np.ndarray:
    """(P, 2) where reference points land in the target, from one meta["subjects"] entry."""
    to_reference = np.asarray(subject["local_to_reference"], dtype=np.float64)  # (2, 3)
    to_target = np.asarray(subject["local_to_target"], dtype=np.float64)
    local = np.linalg.solve(to_reference[:, :2], (ref_points - to_reference[:, 2]).T).T  # (P, 2)
    return local @ to_target[:, :2].T + to_target[:, 2]


def box_side(mask: np.ndarray) -> float:
    """Longer side in pixels of the mask's bounding box."""
    rows, cols = np.nonzero(mask)
    return float(max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1))


def point_errors(sample: Sample, truth: Sample) -> list[np.ndarray]:
    """Per reference, (P,) target-pixel errors of `sample`'s pairs; `truth` has the geometry
    (the synthetic sample the proposal was made for; references in the same order)."""
    subjects = truth.meta.get("subjects")
    if subjects is None or len(subjects) != len(sample.references):
        raise ValueError(f"sample {truth.sample_id!r} has no synthetic geometry for its references")
    return [
        np.linalg.norm(true_target_points(subject, ref.ref_points) - ref.target_points, axis=1)
        for subject, ref in zip(subjects, sample.references)
    ]


@dataclass
class PckTally:
    """Running counts over many pairs."""

    token_size: int
    pairs: int = 0
    candidates: int = 0  # target tokens that could have been matched (queries)
    points: int = 0  # points proposed
    correct_alpha: int = 0
    correct_token: int = 0
    per_pair_alpha: list[float] = field(default_factory=list)  # PCK@0.1 of pairs with points

    def add(self, sample: Sample, truth: Sample, candidates_per_ref: list[int]) -> None:
        for errors, truth_ref, count in zip(point_errors(sample, truth), truth.references, candidates_per_ref):
            hits = errors <= PCK_ALPHA * box_side(truth_ref.mask)
            self.pairs += 1
            self.candidates += count
            self.points += len(errors)
            self.correct_alpha += int(hits.sum())
            self.correct_token += int((errors <= self.token_size).sum())
            if len(errors):
                self.per_pair_alpha.append(float(hits.mean()))

    @property
    def pck_alpha(self) -> float:
        return self.correct_alpha / self.points if self.points else float("nan")

    @property
    def pck_token(self) -> float:
        return self.correct_token / self.points if self.points else float("nan")

    @property
    def kept(self) -> float:
        return self.points / self.candidates if self.candidates else float("nan")

    @property
    def recall_alpha(self) -> float:
        """Correct points (PCK@0.1) per candidate token: what the filter leaves of the good ones."""
        return self.correct_alpha / self.candidates if self.candidates else float("nan")
