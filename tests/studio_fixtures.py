"""Shared by the app tests: the embedded pipeline, reference files, a launched studio."""

from __future__ import annotations

import socket
import struct
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from studio.examples import load_examples

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
FAST = dict(width=64, height=64, steps=2)  # seconds on a CPU


def example_references(count: int) -> list[str]:
    """`count` bundled example references (from the example with the most of them)."""
    references = max(load_examples(), key=lambda e: len(e.references)).references
    return list(references[:count])


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def launched(demo):
    """Serve `demo` on 127.0.0.1 at a free port; yields its URL."""
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
