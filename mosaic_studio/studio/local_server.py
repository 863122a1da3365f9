"""Serve a Gradio demo on 127.0.0.1 at a free port, for tests and benchmarks that drive it."""

from __future__ import annotations

import socket
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def launched(demo, **launch_kwargs):
    """Serve `demo` on 127.0.0.1 at a free port; yields its URL and closes it afterwards.
    launch_kwargs go to demo.launch (e.g. auth)."""
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
