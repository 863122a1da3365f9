"""Benchmark case lists from local folders in the published layouts: DreamBench, UNO's
DreamBench lists and XVerseBench; counts, filled prompts, and errors that name the spot."""

import json

import pytest
from PIL import Image

from mosaic_studio.evaluation.benchmark_sets import (
    BenchmarkFormatError,
    fill_template,
    load_dreambench,
    load_uno_cases,
    load_xversebench,
    parse_dreambench_prompts,
)
from mosaic_studio.mosaic.data.semalign import MAX_REFERENCES

# The layout of google/dreambooth dataset/prompts_and_classes.txt, shortened to 3 subjects and
# 2 prompts per section.
PROMPTS_AND_CLASSES = """Classes

subject_name,class
backpack,backpack
bear_plushie,stuffed animal
dog2,dog

Prompts

Object Prompts

prompt_list = [
'a {0} {1} in the jungle'.format(unique_token, class_token),
'a red {0} {1}'.format(unique_token, class_token)
]

Live Subject Prompts

prompt_list = [
'a {0} {1} wearing a red hat'.format(unique_token, class_token),
'a {0} {1} in a chef outfit'.format(unique_token, class_token)
]
"""


def _write_image(path, colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


@pytest.fixture
def dreambench(tmp_path):
    dataset = tmp_path / "dataset"
    for subject, count in (("backpack", 3), ("bear_plushie", 2), ("dog2", 4)):
        for i in range(count):
            _write_image(dataset / subject / f"{i:02d}.jpg")
    (dataset / "prompts_and_classes.txt").write_text(PROMPTS_AND_CLASSES)
    return dataset


def _replace_line(path, old, new):
    path.write_text(path.read_text().replace(old, new))


# ---------------------------------------------------------------- DreamBench


def test_dreambench_one_case_per_subject_and_prompt(dreambench):
    cases = load_dreambench(dreambench)
    assert len(cases) == 3 * 2
    by_id = {case.case_id: case for case in cases}
    assert by_id["backpack/00"].prompt == "a backpack in the jungle"  # empty unique token, spaces closed up
    assert by_id["bear_plushie/01"].prompt == "a red stuffed animal"
    assert by_id["dog2/00"].prompt == "a dog wearing a red hat"  # live subjects take the live prompts
    case = by_id["dog2/01"]
    assert case.subjects == ["dog"] and case.references == [dreambench / "dog2" / "00.jpg"]
    # DreamBooth scores against all real images of the subject.
    assert case.metric_references == [dreambench / "dog2" / f"{i:02d}.jpg" for i in range(4)]
    assert [im.size for im in case.load_images()] == [(8, 8)]
    assert {case.num_subjects for case in cases} == {1}


def test_dreambench_unique_token_and_reference_choice(dreambench):
    cases = load_dreambench(dreambench, reference=1, unique_token="sks")
    assert cases[0].prompt == "a sks backpack in the jungle"
    assert cases[0].references == [dreambench / "backpack" / "01.jpg"]
    picks = {"backpack": "02.jpg", "bear_plushie": "00.jpg", "dog2": "03.jpg"}
    cases = load_dreambench(dreambench, reference=picks)
    assert {c.subjects[0]: c.references[0].name for c in cases} == {
        "backpack": "02.jpg",
        "stuffed animal": "00.jpg",
        "dog": "03.jpg",
    }


def test_parse_keeps_sections_apart(dreambench):
    parsed = parse_dreambench_prompts(dreambench / "prompts_and_classes.txt")
    assert parsed.classes == {"backpack": "backpack", "bear_plushie": "stuffed animal", "dog2": "dog"}
    assert parsed.object_prompts == ["a {0} {1} in the jungle", "a red {0} {1}"]
    assert parsed.live_prompts == ["a {0} {1} wearing a red hat", "a {0} {1} in a chef outfit"]
    assert fill_template("a {0} {1}", "cube", "V") == "a V cube"


def test_dreambench_errors_name_file_and_line(dreambench):
    prompts = dreambench / "prompts_and_classes.txt"
    _replace_line(prompts, "'a red {0} {1}'", "'a {2} {1}'")
    with pytest.raises(BenchmarkFormatError, match=r"prompts_and_classes.txt:14: unknown placeholder\(s\) \{2\}"):
        load_dreambench(dreambench)
    prompts.write_text(PROMPTS_AND_CLASSES.replace("'a red {0} {1}'.format(unique_token, class_token)", "a red thing"))
    with pytest.raises(BenchmarkFormatError, match=r"txt:14: expected .*got 'a red thing'"):
        load_dreambench(dreambench)
    prompts.write_text(PROMPTS_AND_CLASSES.replace("'a red {0} {1}'", "''"))
    with pytest.raises(BenchmarkFormatError, match=r"txt:14: empty prompt"):
        load_dreambench(dreambench)
    prompts.write_text(PROMPTS_AND_CLASSES.replace("dog2,dog", "dog2"))
    with pytest.raises(BenchmarkFormatError, match=r"txt:6: expected 'subject_name,class'"):
        load_dreambench(dreambench)


def test_dreambench_folder_errors(dreambench):
    with pytest.raises(BenchmarkFormatError, match="subject 'backpack': reference index 5 but only 3 images"):
        load_dreambench(dreambench, reference=5)
    with pytest.raises(BenchmarkFormatError, match="subject 'dog2': reference 'zz.jpg' is not an image"):
        load_dreambench(dreambench, reference={"backpack": "00.jpg", "bear_plushie": "00.jpg", "dog2": "zz.jpg"})
    for image in (dreambench / "bear_plushie").iterdir():
        image.unlink()
    with pytest.raises(BenchmarkFormatError, match="subject 'bear_plushie' has no images"):
        load_dreambench(dreambench)
    (dreambench / "prompts_and_classes.txt").unlink()
    with pytest.raises(BenchmarkFormatError, match="no prompts_and_classes.txt"):
        load_dreambench(dreambench)


def test_dreambench_missing_section(dreambench):
    prompts = dreambench / "prompts_and_classes.txt"
    prompts.write_text(PROMPTS_AND_CLASSES.split("Live Subject Prompts")[0])
    with pytest.raises(BenchmarkFormatError, match="no entries in section 'Live Subject Prompts'"):
        load_dreambench(dreambench)


# ---------------------------------------------------------------- UNO lists


def test_uno_list_paths_are_relative_to_the_json(tmp_path):
    for subject in ("backpack_dog", "bear_plushie"):
        _write_image(tmp_path / "dreambooth" / "dataset" / subject / "02.jpg")
    cases = [
        {
            "prompt": "a backpack and a stuffed animal in the jungle",
            "image_paths": ["./dreambooth/dataset/backpack_dog/02.jpg", "./dreambooth/dataset/bear_plushie/02.jpg"],
        }
    ]
    (tmp_path / "dreambench_multiip.json").write_text(json.dumps(cases))
    [case] = load_uno_cases(tmp_path / "dreambench_multiip.json")
    assert case.case_id == "0" and case.subjects == ["backpack_dog", "bear_plushie"]
    assert [im.size for im in case.load_metric_images()] == [(8, 8), (8, 8)]
    (tmp_path / "dreambench_multiip.json").write_text(json.dumps([{"prompt": "a dog"}]))
    with pytest.raises(BenchmarkFormatError, match=r"dreambench_multiip.json: case 0: missing field 'image_paths'"):
        load_uno_cases(tmp_path / "dreambench_multiip.json")


# ---------------------------------------------------------------- XVerseBench


def _xverse_entry(index, prompt, inputs):
    """One entry in the layout of XVerse eval/tools/XVerseBench_multi.json."""
    return {
        "index": index,
        "input_images": [],
        "position_delta": [0, -32],
        "prompt": prompt,
        "modulation": [
            {
                "type": "adapter",
                "src_inputs": [{"image_path": path, "caption": caption} for path, caption, _ in inputs],
                "use_words": [[j, word, word] for j, (_, _, word) in enumerate(inputs)],
            }
        ],
    }


MAN = ("assets/XVerseBench/human/05_man.jpg", "a man", "man")
MOTORCYCLE = ("assets/XVerseBench/object/00_motorcycle.jpg", "a motorcycle", "motorcycle")
BEAR = ("assets/XVerseBench/animal/13_polar bear.jpg", "a polar bear", "polar bear")


@pytest.fixture
def xverse(tmp_path):
    for path, _, _ in (MAN, MOTORCYCLE, BEAR):
        _write_image(tmp_path / path)
    entries = [
        _xverse_entry(0, "A man is riding a motorcycle.", [MAN, MOTORCYCLE]),
        _xverse_entry(1, "A man rides a motorcycle past a polar bear.", [MAN, MOTORCYCLE, BEAR]),
    ]
    list_path = tmp_path / "eval" / "tools" / "XVerseBench_multi.json"
    list_path.parent.mkdir(parents=True)
    list_path.write_text(json.dumps(entries, indent=4))
    return list_path


def test_xversebench_multi_subject_cases(xverse):
    root = xverse.parents[2]  # the XVerse checkout: image paths are relative to it
    cases = load_xversebench(xverse, root=root)
    assert [c.case_id for c in cases] == ["0", "1"]
    assert cases[1].prompt == "A man rides a motorcycle past a polar bear."
    assert cases[1].subjects == ["man", "motorcycle", "polar bear"]
    assert cases[1].references == [root / MAN[0], root / MOTORCYCLE[0], root / BEAR[0]]
    assert cases[1].metric_references == cases[1].references
    assert [c.num_subjects for c in cases] == [2, 3]
    # Some real entries add which occurrence of the word in the prompt: [1, "man", "man", 2].
    _rewrite(xverse, lambda e: e[0]["modulation"][0]["use_words"][1].append(2))
    assert load_xversebench(xverse, root=root)[0].subjects == ["man", "motorcycle"]


def _rewrite(list_path, change):
    entries = json.loads(list_path.read_text())
    change(entries)
    list_path.write_text(json.dumps(entries, indent=4))


def test_xversebench_errors_name_case_and_field(xverse):
    root = xverse.parents[2]
    with pytest.raises(BenchmarkFormatError, match=r"XVerseBench_multi.json: case 0: no such image .*05_man.jpg"):
        load_xversebench(xverse)  # default root = the JSON's folder, where the images are not
    _rewrite(xverse, lambda e: e[1].update(prompt=" "))
    with pytest.raises(BenchmarkFormatError, match="case 1: empty prompt"):
        load_xversebench(xverse, root=root)
    _rewrite(xverse, lambda e: e[1].update(_xverse_entry(1, "seven", [MAN] * (MAX_REFERENCES + 1))))
    with pytest.raises(BenchmarkFormatError, match=f"case 1: {MAX_REFERENCES + 1} references; MOSAIC takes 1..6"):
        load_xversebench(xverse, root=root)
    _rewrite(xverse, lambda e: e[0]["modulation"][0]["use_words"].reverse())  # entry j must describe src_input j
    with pytest.raises(BenchmarkFormatError, match=r"case 0 modulation\[0\].use_words: expected \[j, word, word"):
        load_xversebench(xverse, root=root)
    _rewrite(xverse, lambda e: e[0]["modulation"][0]["use_words"].reverse())  # back
    _rewrite(xverse, lambda e: e[0]["modulation"][0]["src_inputs"][1].pop("caption"))
    with pytest.raises(BenchmarkFormatError, match=r"case 0 modulation\[0\].src_inputs\[1\]: missing field 'caption'"):
        load_xversebench(xverse, root=root)
    xverse.write_text('[{"prompt": "x",\n "modulation": }]')
    with pytest.raises(BenchmarkFormatError, match=r"XVerseBench_multi.json:2: invalid JSON"):
        load_xversebench(xverse, root=root)
