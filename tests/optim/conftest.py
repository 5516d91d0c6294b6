"""Fixtures of the LAMB and LARS tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture()
def forbid_host_reads(monkeypatch):
    """A function that makes every way of reading a tensor's value on the host raise.

    Called once the optimiser is built (its constructor may read a tensor decay once): from then
    on, a step that synchronises with the host fails the test.
    """

    def host_sync(*args, **kwargs):
        raise AssertionError("step() read a tensor value on the host")

    def arm() -> None:
        for name in ("item", "__bool__", "__float__", "__int__", "tolist"):
            monkeypatch.setattr(torch.Tensor, name, host_sync)

    return arm
