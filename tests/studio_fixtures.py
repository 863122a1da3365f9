"""Shared by the app tests: the embedded pipeline, reference files, points on the canvas."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from gradio_client import Client
from PIL import Image

from mosaic_studio.studio.canvas import TARGET, Layout
from mosaic_studio.studio.drawing import HIT_RADIUS, DrawnPair, endpoints
from mosaic_studio.studio.examples import load_examples

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
FAST = dict(width=64, height=64, steps=2)  # seconds on a CPU
HTTP_TIMEOUT_S = 300  # a generation through a served app on a busy 2-core machine takes a while


def generate_inputs(references, prompt: str, categories: str = "", images: int = 1, **settings) -> list:
    """The Generate tab's inputs in the order of its handler and its /generate endpoint: references,
    prompt, categories, width, height, steps, guidance, seed, randomise, images, background removal,
    attention steps (first, last), tolerant crop."""
    size = {**FAST, **settings}
    return [
        references,
        prompt,
        categories,
        size["width"],
        size["height"],
        size["steps"],
        3.5,
        7,
        False,
        images,
        False,
        1,
        100,
        False,
    ]


def connect(url: str, **kwargs):
    """A gradio_client for a served app, with the long timeout a CPU generation needs."""
    return Client(url, verbose=False, httpx_kwargs={"timeout": HTTP_TIMEOUT_S}, **kwargs)


def example_references(count: int) -> list[str]:
    """`count` bundled example references (from the example with the most of them)."""
    references = max(load_examples(), key=lambda e: len(e.references)).references
    return list(references[:count])


def free_target_point(layout: Layout, pairs: list[DrawnPair], margin: int = 2) -> tuple[float, float]:
    """A whole-pixel point of the target image that a Select/move click moves the selected pair
    to: on the canvas it lies farther than HIT_RADIUS from every drawn end (a click that close
    would select that end's pair instead). The grid point farthest from all ends, so it never
    depends on where the model's proposals happen to fall (token centres change with its size)."""
    assert pairs, "no pair to move"
    panel = layout.panel(TARGET)
    ends = np.array([end for pair in pairs for end in endpoints(layout, pair)], dtype=np.float64)  # (E, 2)
    width, height = panel.image_size
    grid = np.array(
        [(x, y) for y in range(margin, height - margin + 1) for x in range(margin, width - margin + 1)],
        dtype=np.float64,
    )
    canvas = np.array([panel.to_canvas(tuple(xy)) for xy in grid])  # (N, 2)
    clearance = np.sqrt(((canvas[:, None, :] - ends[None, :, :]) ** 2).sum(axis=2)).min(axis=1)
    best = int(np.argmax(clearance))
    assert clearance[best] > 2 * HIT_RADIUS, f"no target point clear of the {len(ends)} drawn ends"
    return (float(grid[best][0]), float(grid[best][1]))


def box_file(path: Path, colour=(200, 40, 40), size=(80, 80)) -> str:
    image = np.full((size[1], size[0], 3), 255, np.uint8)
    image[size[1] // 4 : 3 * size[1] // 4, size[0] // 3 : 2 * size[0] // 3] = colour
    Image.fromarray(image).save(path)
    return str(path)


def png_declaring(path: Path, width: int, height: int) -> str:
    """A PNG whose header declares width × height (a decompression bomb) with no real pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)
    return str(path)
