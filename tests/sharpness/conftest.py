"""Shared setup of the sharpness tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """These models are tiny: intra-op threads only add synchronisation, which on a busy shared
    CPU makes the suite ten times slower. Restored afterwards for the rest of the session."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
