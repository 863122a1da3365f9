"""Draw the bundled example references and write `examples.json`:

    python mosaic_studio/assets/examples/make_examples.py

Each subject is a few PIL primitives in a main and an accent colour on white, drawn at 4x and
downsampled (antialiased edges). The kinds, colour names and caption style follow the synthetic
world the embedded model is trained on (mosaic_studio/world/shapes.py and synthetic.py), so the
examples are in its domain. Deterministic: no randomness, same bytes on every run with the same Pillow.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

from mosaic_studio.world.shapes import COLOURS  # the world's palette: the examples stay in its domain

HERE = Path(__file__).resolve().parent
SIZE = 256  # pixels per reference side: the app's default output size
SUPERSAMPLE = 4  # drawn at 4x, then downsampled
WHITE = (255, 255, 255)


def _person(d, main, accent):
    d.ellipse((100, 20, 156, 76), fill=accent)  # head
    d.rounded_rectangle((92, 80, 164, 170), 14, fill=main)  # body
    d.line((160, 92, 205, 40), fill=main, width=16)  # raised arm
    d.line((96, 92, 60, 150), fill=main, width=16)
    d.line((110, 165, 100, 236), fill=accent, width=18)  # legs
    d.line((146, 165, 156, 236), fill=accent, width=18)


def _quadruped(d, main, accent):
    d.ellipse((40, 90, 190, 170), fill=main)  # body
    d.ellipse((170, 50, 230, 110), fill=main)  # head
    d.polygon([(182, 60), (196, 60), (186, 28)], fill=accent)  # ear
    d.line((45, 115, 14, 70), fill=accent, width=10)  # tail
    for x in (62, 92, 140, 168):
        d.line((x, 150, x, 222), fill=accent, width=13)


def _bird(d, main, accent):
    d.ellipse((50, 90, 180, 180), fill=main)  # body
    d.ellipse((150, 50, 206, 106), fill=main)  # head
    d.polygon([(202, 70), (244, 80), (202, 92)], fill=accent)  # beak
    d.ellipse((80, 110, 150, 150), fill=accent)  # wing
    d.polygon([(56, 130), (10, 100), (14, 160)], fill=accent)  # tail
    d.line((110, 178, 106, 230), fill=accent, width=6)
    d.line((130, 178, 136, 230), fill=accent, width=6)


def _fish(d, main, accent):
    d.ellipse((60, 70, 230, 170), fill=main)
    d.polygon([(70, 120), (12, 70), (12, 170)], fill=accent)  # tail
    d.polygon([(120, 78), (170, 78), (140, 36)], fill=accent)  # fin
    d.ellipse((190, 100, 206, 116), fill=accent)  # eye


def _vase(d, main, accent):
    d.ellipse((56, 80, 200, 236), fill=main)  # belly
    d.rectangle((104, 36, 152, 100), fill=main)  # neck
    d.rectangle((88, 22, 168, 40), fill=accent)  # lip
    d.line((70, 170, 186, 170), fill=accent, width=10)  # band


def _mug(d, main, accent):
    d.rounded_rectangle((40, 50, 180, 220), 16, fill=main)
    d.ellipse((160, 90, 236, 180), outline=accent, width=18)  # handle
    d.rectangle((36, 44, 184, 60), fill=accent)  # rim


def _lamp(d, main, accent):
    d.polygon([(96, 20), (160, 20), (210, 110), (46, 110)], fill=main)  # shade
    d.line((128, 110, 128, 220), fill=accent, width=12)  # pole
    d.rounded_rectangle((76, 214, 196, 236), 6, fill=accent)  # base, off-centre


def _chest(d, main, accent):
    d.rounded_rectangle((20, 96, 236, 220), 10, fill=main)  # box
    d.rounded_rectangle((16, 60, 240, 100), 10, fill=accent)  # lid
    d.rectangle((180, 120, 200, 150), fill=accent)  # latch, off-centre


SUBJECTS = {  # file stem: (category, kind, main colour, accent colour, drawing)
    "blue_person": ("human", "person", "blue", "pink", _person),
    "brown_quadruped": ("animal", "quadruped", "brown", "black", _quadruped),
    "yellow_bird": ("animal", "bird", "yellow", "orange", _bird),
    "orange_fish": ("animal", "fish", "orange", "blue", _fish),
    "red_vase": ("object", "vase", "red", "yellow", _vase),
    "teal_mug": ("object", "mug", "teal", "black", _mug),
    "purple_lamp": ("object", "lamp", "purple", "yellow", _lamp),
    "green_chest": ("object", "chest", "green", "brown", _chest),
}

EXAMPLES = [  # name, subjects (reference order), background phrase, seed
    ("one subject", ["red_vase"], "a plain background", 1),
    ("two subjects", ["blue_person", "brown_quadruped"], "a plain background", 2),
    ("three subjects", ["yellow_bird", "orange_fish", "teal_mug"], "a gradient background", 3),
    ("four subjects", ["purple_lamp", "green_chest", "red_vase", "blue_person"], "a striped background", 4),
    (
        "six subjects",
        ["blue_person", "brown_quadruped", "yellow_bird", "orange_fish", "teal_mug", "purple_lamp"],
        "a plain background",
        6,
    ),
]


def draw_subject(name: str) -> Image.Image:
    _, _, main, accent, draw = SUBJECTS[name]
    big = Image.new("RGB", (SIZE * SUPERSAMPLE,) * 2, WHITE)
    draw(_Scaled(ImageDraw.Draw(big), SUPERSAMPLE), COLOURS[main], COLOURS[accent])  # coordinates are for SIZE
    return big.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


class _Scaled:
    """ImageDraw proxy that multiplies every coordinate and width by `factor`."""

    def __init__(self, draw: ImageDraw.ImageDraw, factor: int):
        self.draw, self.factor = draw, factor

    def _xy(self, xy):
        if xy and isinstance(xy[0], tuple):
            return [(x * self.factor, y * self.factor) for x, y in xy]
        return [v * self.factor for v in xy]

    def __getattr__(self, method):
        def call(xy, *args, **kwargs):
            if "width" in kwargs:
                kwargs["width"] *= self.factor
            if method == "rounded_rectangle" and args:
                args = (args[0] * self.factor, *args[1:])
            return getattr(self.draw, method)(self._xy(xy), *args, **kwargs)

        return call


def caption(names: list[str], background: str) -> str:
    words = [f"{'an' if SUBJECTS[n][2][0] in 'aeiou' else 'a'} {SUBJECTS[n][2]} {SUBJECTS[n][1]}" for n in names]
    listed = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    return f"{listed} on {background}"


def main(out: Path = HERE) -> None:
    for name in SUBJECTS:
        draw_subject(name).save(out / f"{name}.png", optimize=True)
    examples = [
        {
            "name": title,
            "prompt": caption(names, background),
            "references": [f"{n}.png" for n in names],
            "categories": [SUBJECTS[n][0] for n in names],
            "width": SIZE,
            "height": SIZE,
            "seed": seed,
        }
        for title, names, background, seed in EXAMPLES
    ]
    (out / "examples.json").write_text(json.dumps(examples, indent=2) + "\n")


if __name__ == "__main__":
    main()
