"""Shared by the benchmark scripts: build a model directly on its device in its dtype."""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def built_on(device: str, dtype: torch.dtype):
    """Modules created inside are allocated on `device` in `dtype` from the start: a FLUX.1-dev
    sized fp32 copy on the host would take ~48 GB and minutes of random init before the first
    step. The default dtype is restored afterwards, even on error."""
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(default_dtype)
