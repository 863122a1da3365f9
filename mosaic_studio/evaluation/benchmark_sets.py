"""Benchmark case lists (DreamBench, UNO's DreamBench lists, XVerseBench) from local folders.

Every loader returns `BenchmarkCase`s: a prompt, the reference images the model is given (one
per subject, 1..MAX_REFERENCES), each subject's class word, and the images the published
protocol scores against (`metric_references`, see mosaic_studio/evaluation/published_metrics.py). Nothing is
downloaded; images are checked to exist at load time and opened only by `load_images`.

Formats, as published:

DreamBench (google/dreambooth, `dataset/`): one folder per subject (`backpack/00.jpg`, ...) and
  `prompts_and_classes.txt`, a text file with three sections:
      Classes                         Object Prompts               Live Subject Prompts
      subject_name,class              prompt_list = [              prompt_list = [
      backpack,backpack               'a {0} {1} in the jungle'.format(unique_token, class_token),
      bear_plushie,stuffed animal     ...                          ...
                                      ]                            ]
  {0} is the unique identifier token (DreamBooth's rare token; "" for zero-shot methods, which
  gives "a backpack in the jungle", the prompts of UNO's list) and {1} the class. Live subjects
  (the 9 cats and dogs; the file does not mark them, so it is `live_classes`) take the live
  prompts, the others the object prompts: 30 subjects x 25 prompts = 750 cases. DreamBooth
  scores each image against all real images of its subject, so `metric_references` holds the
  whole subject folder, while `references` holds the one image given to the model.

UNO (bytedance/UNO, `datasets/dreambench_singleip.json` / `dreambench_multiip.json`): a JSON
  list of {"prompt": str, "image_paths": [str, ...]}, paths relative to the JSON's folder
  (750 single-subject cases with UNO's chosen reference per subject, 750 two-subject cases).
  The lists carry no class words, so `subjects` is each image's folder name (the DreamBench
  subject, e.g. "bear_plushie").

XVerseBench (bytedance/XVerse, `eval/tools/XVerseBench_{single,multi}.json`): a JSON list of
      {"index": 0, "prompt": "A man is riding a motorcycle.", "input_images": [],
       "position_delta": [0, -32],
       "modulation": [{"type": "adapter",
                       "src_inputs": [{"image_path": "assets/XVerseBench/human/05_man.jpg", "caption": "a man"}, ...],
                       "use_words": [[0, "man", "man"], ...]}]}
  with image paths relative to the XVerse checkout (pass it as `root`): 90 single-subject and
  210 multi-subject cases (120 with two subjects, 90 with three). A use_words entry is
  [src index, word in caption, word in prompt], in some cases followed by which occurrence of
  the word in the prompt ("A man is standing beside another man." has [1, "man", "man", 2]) and
  an ID flag. `subjects` are the use_words caption words (the labels XVerse's scorer detects),
  else the captions. Human images (`.../human/...`) get face ID, not DINO, in XVerse's protocol.

Errors: `BenchmarkFormatError` (a ValueError) naming the file, the line (text) or case and
field (JSON), and what is wrong; nothing is skipped or repaired silently.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from mosaic_studio.mosaic.data.semalign import MAX_REFERENCES, MIN_REFERENCES

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
DREAMBENCH_PROMPTS_FILE = "prompts_and_classes.txt"
LIVE_CLASSES = ("cat", "dog")  # DreamBooth's live subjects: cat, cat2, dog, dog2..dog8
UNIQUE_TOKEN, CLASS_TOKEN = "0", "1"  # DreamBench template fields: '{0} {1}'.format(unique_token, class_token)


class BenchmarkFormatError(ValueError):
    """A case list or dataset folder that does not match its published format."""


@dataclass
class BenchmarkCase:
    """One prompt with its subjects.

    references: images given to the model, one per subject, in `subjects` order.
    subjects: each reference's class word ("dog", "stuffed animal", "motorcycle").
    metric_references: images CLIP-I and DINO compare the generated image with, in the
    benchmark's published protocol (DreamBench: every real image of the subject).
    """

    case_id: str
    prompt: str
    references: list[Path]
    subjects: list[str]
    metric_references: list[Path]

    @property
    def num_subjects(self) -> int:
        return len(self.references)

    def load_images(self) -> list[Image.Image]:
        """The references as RGB images, in subject order."""
        return [Image.open(path).convert("RGB") for path in self.references]

    def load_metric_images(self) -> list[Image.Image]:
        return [Image.open(path).convert("RGB") for path in self.metric_references]


def _check_case(case: BenchmarkCase, where: str) -> BenchmarkCase:
    if not case.prompt.strip():
        raise BenchmarkFormatError(f"{where}: empty prompt")
    if not MIN_REFERENCES <= len(case.references) <= MAX_REFERENCES:
        raise BenchmarkFormatError(
            f"{where}: {len(case.references)} references; MOSAIC takes {MIN_REFERENCES}..{MAX_REFERENCES}"
        )
    for path in dict.fromkeys([*case.references, *case.metric_references]):  # ordered, no repeats
        if not path.is_file():
            raise BenchmarkFormatError(f"{where}: no such image {path}")
    return case


# ---------------------------------------------------------------- DreamBench


@dataclass
class DreamBenchPrompts:
    """The parsed prompts_and_classes.txt: subject -> class, and the two template lists."""

    classes: dict[str, str]
    object_prompts: list[str]
    live_prompts: list[str]


# A template line: 'a {0} {1} in the jungle'.format(unique_token, class_token),
_TEMPLATE_LINE = re.compile(r"""^(['"])(.*)\1\.format\(\s*unique_token\s*,\s*class_token\s*\)\s*,?$""")
_SECTIONS = {"Classes": "classes", "Prompts": None, "Object Prompts": "object", "Live Subject Prompts": "live"}


def check_template(template: str, where: str) -> str:
    """A DreamBench template may only use {0} (unique token) and {1} (class)."""
    if not template.strip():
        raise BenchmarkFormatError(f"{where}: empty prompt")
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:  # an unmatched brace
        raise BenchmarkFormatError(f"{where}: bad template {template!r}: {err}") from err
    unknown = sorted(set(fields) - {UNIQUE_TOKEN, CLASS_TOKEN})
    if unknown:
        raise BenchmarkFormatError(
            f"{where}: unknown placeholder(s) {', '.join('{' + f + '}' for f in unknown)} "
            f"in {template!r}; allowed: {{0}} (unique token), {{1}} (class)"
        )
    return template


def fill_template(template: str, class_token: str, unique_token: str = "") -> str:
    """'a {0} {1} in the jungle' -> 'a backpack in the jungle' (empty unique token: spaces closed up)."""
    return " ".join(template.format(unique_token, class_token).split())


def parse_dreambench_prompts(path: str | Path) -> DreamBenchPrompts:
    path = Path(path)
    section = None
    classes: dict[str, str] = {}
    prompts: dict[str, list[str]] = {"object": [], "live": []}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line, where = raw.strip(), f"{path}:{lineno}"
        if not line:
            continue
        if line in _SECTIONS:
            section = _SECTIONS[line]
        elif section == "classes":
            if line == "subject_name,class":
                continue
            subject, _, class_token = (part.strip() for part in line.partition(","))
            if not subject or not class_token:
                raise BenchmarkFormatError(f"{where}: expected 'subject_name,class', got {line!r}")
            if subject in classes:
                raise BenchmarkFormatError(f"{where}: subject {subject!r} listed twice")
            classes[subject] = class_token
        elif section in prompts:
            if line in ("prompt_list = [", "]"):
                continue
            match = _TEMPLATE_LINE.match(line)
            if match is None:
                raise BenchmarkFormatError(
                    f"{where}: expected \"'<template>'.format(unique_token, class_token),\", got {line!r}"
                )
            prompts[section].append(check_template(match.group(2), where))
        else:
            raise BenchmarkFormatError(f"{where}: {line!r} outside the sections {', '.join(_SECTIONS)}")
    for name, found in (
        ("Classes", classes),
        ("Object Prompts", prompts["object"]),
        ("Live Subject Prompts", prompts["live"]),
    ):
        if not found:
            raise BenchmarkFormatError(f"{path}: no entries in section {name!r}")
    return DreamBenchPrompts(classes, prompts["object"], prompts["live"])


def subject_images(folder: Path) -> list[Path]:
    """A subject folder's images, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_dreambench(
    dataset_dir: str | Path,
    reference: int | Mapping[str, str] = 0,
    unique_token: str = "",
    live_classes: tuple[str, ...] = LIVE_CLASSES,
) -> list[BenchmarkCase]:
    """One single-subject case per (subject, prompt) of a DreamBench `dataset/` folder.

    reference: which image of each subject the model gets: an index into its sorted images, or
    {subject: file name} (to reproduce a paper's picks; UNO's are in its JSON, `load_uno_cases`).
    unique_token: DreamBooth's identifier for {0}; "" for zero-shot methods.
    Case ids are "<subject>/<prompt number, 2 digits>".
    """
    dataset_dir = Path(dataset_dir)
    prompts_path = dataset_dir / DREAMBENCH_PROMPTS_FILE
    if not prompts_path.is_file():
        raise BenchmarkFormatError(
            f"{dataset_dir}: no {DREAMBENCH_PROMPTS_FILE} (the DreamBench dataset/ folder has one)"
        )
    parsed = parse_dreambench_prompts(prompts_path)
    cases = []
    for subject, class_token in parsed.classes.items():
        folder = dataset_dir / subject
        images = subject_images(folder) if folder.is_dir() else []
        if not images:
            raise BenchmarkFormatError(f"{prompts_path}: subject {subject!r} has no images in {folder}")
        chosen = _pick_reference(subject, images, reference, f"{prompts_path}: subject {subject!r}")
        templates = parsed.live_prompts if class_token in live_classes else parsed.object_prompts
        for k, template in enumerate(templates):
            case = BenchmarkCase(
                f"{subject}/{k:02d}",
                fill_template(template, class_token, unique_token),
                [chosen],
                [class_token],
                images,
            )
            cases.append(_check_case(case, f"{prompts_path}: case {case.case_id}"))
    return cases


def _pick_reference(subject: str, images: list[Path], reference: int | Mapping[str, str], where: str) -> Path:
    if isinstance(reference, int):
        if not -len(images) <= reference < len(images):
            raise BenchmarkFormatError(
                f"{where}: reference index {reference} but only {len(images)} images in {images[0].parent}"
            )
        return images[reference]
    if subject not in reference:
        raise BenchmarkFormatError(f"{where}: missing from the reference mapping")
    chosen = images[0].parent / reference[subject]
    if chosen not in images:
        raise BenchmarkFormatError(f"{where}: reference {reference[subject]!r} is not an image in {images[0].parent}")
    return chosen


# ---------------------------------------------------------------- JSON case lists


def _read_json_list(path: Path) -> list[Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise BenchmarkFormatError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from err
    if not isinstance(data, list):
        raise BenchmarkFormatError(f"{path}: expected a JSON list of cases, got {type(data).__name__}")
    return data


def _field(entry: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(entry, dict):
        raise BenchmarkFormatError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    if key not in entry:
        raise BenchmarkFormatError(f"{where}: missing field {key!r}")
    if not isinstance(entry[key], kind):
        raise BenchmarkFormatError(f"{where}: field {key!r} should be {kind.__name__}, got {type(entry[key]).__name__}")
    return entry[key]


def _list_entries(json_path: str | Path, root: str | Path | None):
    """(position, entry, where, prompt, root) for each entry of a JSON case list; `root`
    defaults to the list's folder."""
    json_path = Path(json_path)
    root = json_path.parent if root is None else Path(root)
    for i, entry in enumerate(_read_json_list(json_path)):
        where = f"{json_path}: case {i}"
        yield i, entry, where, _field(entry, "prompt", str, where), root


def load_uno_cases(json_path: str | Path, root: str | Path | None = None) -> list[BenchmarkCase]:
    """UNO's DreamBench case lists; image paths are relative to `root` (default: the JSON's
    folder, as UNO's inference.py resolves them). Case ids are the list positions."""
    cases = []
    for i, entry, where, prompt, folder in _list_entries(json_path, root):
        paths = [folder / p for p in _field(entry, "image_paths", list, where)]
        subjects = [p.parent.name for p in paths]
        cases.append(_check_case(BenchmarkCase(str(i), prompt, paths, subjects, paths), where))
    return cases


def load_xversebench(json_path: str | Path, root: str | Path | None = None) -> list[BenchmarkCase]:
    """XVerseBench_single.json / XVerseBench_multi.json; image paths are relative to `root`, the
    XVerse checkout (default: the JSON's folder). Case ids are the entries' "index"."""
    cases = []
    for i, entry, where, prompt, folder in _list_entries(json_path, root):
        modulation = _field(entry, "modulation", list, where)
        if len(modulation) != 1:
            raise BenchmarkFormatError(f"{where}: field 'modulation' should hold one entry, got {len(modulation)}")
        inputs = _field(modulation[0], "src_inputs", list, f"{where} modulation[0]")
        paths, captions = [], []
        for j, src in enumerate(inputs):
            at = f"{where} modulation[0].src_inputs[{j}]"
            paths.append(folder / _field(src, "image_path", str, at))
            captions.append(_field(src, "caption", str, at))
        subjects = captions
        if "use_words" in modulation[0]:
            words = _field(modulation[0], "use_words", list, f"{where} modulation[0]")
            # [src index, word in caption, word in prompt, (which occurrence), (id flag)], src j at j
            if len(words) != len(inputs) or not all(
                isinstance(w, list) and 3 <= len(w) <= 5 and w[0] == j and isinstance(w[1], str)
                for j, w in enumerate(words)
            ):
                raise BenchmarkFormatError(
                    f"{where} modulation[0].use_words: expected [j, word, word, ...] for each "
                    f"src_input j = 0..{len(inputs) - 1}, got {words!r}"
                )
            subjects = [w[1] for w in words]  # the label XVerse's scorer detects in the generated image
        case_id = str(entry.get("index", i))
        if any(case.case_id == case_id for case in cases):
            raise BenchmarkFormatError(f"{where}: index {case_id} used twice")
        cases.append(_check_case(BenchmarkCase(case_id, prompt, paths, subjects, paths), where))
    return cases
