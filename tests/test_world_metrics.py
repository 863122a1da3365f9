"""World metrics on constructed scenes: the true subject scores highest, a colour swap is leakage,
a removed subject is missing, a doubled one is duplicated, perfect attention has PCK 1."""

import dataclasses

import cv2
import numpy as np
import pytest
import torch

from mosaic_studio.evaluation.metrics import attention_pck
from mosaic_studio.evaluation.world_metrics import SCALES, chance_fidelity, subject_scores
from mosaic_studio.world.shapes import MAIN, make_identity, shade
from mosaic_studio.world.synthetic import _pixel_centres, _reference, _to_local

SIDE = 128
BACKGROUND = (214, 204, 190)
# Held-out, plain-pattern identities of distinct kinds and main colours.
BLUE_PERSON, GREEN_VASE, ORANGE_LAMP, GRAY_FISH = (make_identity(i) for i in (39, 122, 214, 184))
LEFT, RIGHT = (34, 64), (94, 64)


def placement(identity, centre, longer_side):
    """local → image affine putting the subject's box centre at `centre`, longer side in px."""
    x0, y0, x1, y1 = identity.bounds
    scale = longer_side / max(x1 - x0, y1 - y0)
    return np.array([[scale, 0.0, centre[0] - scale * (x0 + x1) / 2], [0.0, scale, centre[1] - scale * (y0 + y1) / 2]])


def render(subjects, side=SIDE):
    """Subjects [(identity, centre)] on a plain background at the searched scale SCALES[8]."""
    image = np.empty((side, side, 3), np.uint8)
    image[:] = BACKGROUND
    for identity, centre in subjects:
        covered, colour = shade(
            identity, *_to_local(placement(identity, centre, SCALES[8] * side), *_pixel_centres(0, 0, side, side))
        )
        image[covered] = colour[covered]
    return image


def ref(identity):
    return _reference(identity, 64)[0]


def swapped(identity, other):
    """`identity` wearing `other`'s main colour (palette row 1, MAIN)."""
    palette = identity.palette.copy()
    palette[MAIN] = other.palette[MAIN]
    return dataclasses.replace(identity, palette=palette, main_name=other.main_name)


def test_identical_subject_has_maximal_fidelity():
    scene = render([(BLUE_PERSON, LEFT), (GREEN_VASE, RIGHT)])
    person, vase = subject_scores(scene, [ref(BLUE_PERSON), ref(GREEN_VASE)])
    assert person.fidelity > 0.9 and vase.fidelity > 0.9
    # Every change to the subject scores lower than the subject itself.
    recoloured = render([(swapped(BLUE_PERSON, ORANGE_LAMP), LEFT), (GREEN_VASE, RIGHT)])
    blurred = cv2.GaussianBlur(scene, (0, 0), 3)  # what a blurry generation looks like
    for changed in (recoloured, blurred, render([(GREEN_VASE, RIGHT)])):
        assert subject_scores(changed, [ref(BLUE_PERSON)])[0].fidelity < person.fidelity - 0.05
    # Other identities match worse than the true one: the chance baseline is below it.
    chance = chance_fidelity(scene, [ref(ORANGE_LAMP), ref(GRAY_FISH)])
    assert chance < person.fidelity - 0.15
    assert subject_scores(scene, [ref(BLUE_PERSON)], chance=chance)[0].gain == pytest.approx(person.fidelity - chance)


def test_colour_swap_between_two_subjects_is_leakage():
    refs = [ref(BLUE_PERSON), ref(GREEN_VASE)]
    faithful = subject_scores(render([(BLUE_PERSON, LEFT), (GREEN_VASE, RIGHT)]), refs)
    assert [s.leaked for s in faithful] == [False, False]
    swap = render([(swapped(BLUE_PERSON, GREEN_VASE), LEFT), (swapped(GREEN_VASE, BLUE_PERSON), RIGHT)])
    leaky = subject_scores(swap, refs)
    assert [s.leaked for s in leaky] == [True, True]


def test_removed_subject_fails_presence_and_doubled_one_is_duplicated():
    refs = [ref(BLUE_PERSON), ref(GREEN_VASE)]
    person, vase = subject_scores(render([(BLUE_PERSON, LEFT)]), refs)
    assert (person.count, vase.count) == (1, 0)
    assert person.present and not vase.present
    assert vase.leaked is None  # leakage is only judged for subjects that are there
    twice = subject_scores(render([(BLUE_PERSON, LEFT), (BLUE_PERSON, RIGHT)]), refs[:1])[0]
    assert twice.count == 2


def test_prompt_adherence_needs_the_named_colour_and_kind():
    scene = render([(BLUE_PERSON, LEFT), (GREEN_VASE, RIGHT)])
    person, vase = subject_scores(scene, [ref(BLUE_PERSON), ref(GREEN_VASE)], ["blue", "green"])
    assert person.adherent and vase.adherent
    wrong = subject_scores(scene, [ref(BLUE_PERSON)], ["purple"])[0]
    assert wrong.kind_present and not wrong.colour_present and not wrong.adherent
    absent = subject_scores(render([(GREEN_VASE, RIGHT)]), [ref(GRAY_FISH)], ["gray"])[0]
    assert not absent.adherent


def test_perfect_attention_has_pck_one():
    grid_w, rows = 16, 40
    target = torch.randint(0, grid_w * grid_w, (2, rows))
    perfect = torch.nn.functional.one_hot(target, grid_w * grid_w).float()
    assert attention_pck(perfect, target, grid_w, radius=0).item() == 1.0
    far = torch.nn.functional.one_hot((target + 3 * grid_w) % (grid_w * grid_w), grid_w * grid_w).float()
    assert attention_pck(far, target, grid_w, radius=1).item() == 0.0


def test_bad_inputs_are_named():
    scene = render([(BLUE_PERSON, LEFT)])
    with pytest.raises(ValueError, match="square"):
        subject_scores(scene[:, :100], [ref(BLUE_PERSON)])
    with pytest.raises(ValueError, match="at least one reference"):
        subject_scores(scene, [])
    with pytest.raises(ValueError, match="unknown colour names"):
        subject_scores(scene, [ref(BLUE_PERSON)], ["mauve"])
    with pytest.raises(ValueError, match="everything is white"):
        subject_scores(scene, [np.full((64, 64, 3), 255, np.uint8)])
