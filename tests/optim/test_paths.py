"""Which tensors LAMB and LARS step on the per-tensor loop and which on the foreach path."""

from __future__ import annotations

import pytest
import torch
from stepping import make_params
from torch import nn

import biasdecay.optim._common as common
import biasdecay.optim.lamb as lamb_module
import biasdecay.optim.lars as lars_module

OPTIMIZERS = {
    "lamb": (lamb_module, lambda params, **kw: lamb_module.LAMB(params, **kw)),
    "lars": (lars_module, lambda params, **kw: lars_module.LARS(params, lr=0.1, **kw)),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_foreach_default_follows_the_measured_table(monkeypatch, name):
    module, make = OPTIMIZERS[name]
    calls = []
    for path in ("single", "multi"):
        monkeypatch.setattr(
            module,
            f"_{path}_tensor_{name}",
            lambda params, *a, path=path, **k: calls.append((path, len(params))),
        )
    large = nn.Parameter(torch.ones(common.SMALL_TENSOR_NUMEL + 1, dtype=torch.float64))
    params = [*make_params(), large]
    for p in params:
        p.grad = torch.ones_like(p)
    make(params).step()  # CPU: the large tensor loops, the small ones share foreach kernels
    assert calls == [("single", 1), ("multi", len(params) - 1)]
    monkeypatch.setitem(common.FOREACH_IS_FASTER, "cpu", True)
    calls.clear()
    make(params).step()
    assert calls == [("multi", len(params))]
    calls.clear()
    make(params, foreach=False).step()  # an explicit choice holds for every tensor
    assert calls == [("single", len(params))]
    assert common.FOREACH_IS_FASTER["cuda"] is True


def test_new_entries_the_update_writes_come_back_to_the_caller():
    # LARS creates momentum buffers inside the path's update, on lists cut to that path's tensors.
    big, small = torch.zeros(common.SMALL_TENSOR_NUMEL + 1), torch.zeros(3)
    buffers = [None, None]

    def update(params, slots, *, tag):
        for k, p in enumerate(params):
            slots[k] = (tag, p.numel())

    common.step_by_path(
        (lambda *a, **k: update(*a, tag="loop", **k), lambda *a, **k: update(*a, tag="multi", **k)),
        ([big, small], buffers),
        {},
        foreach=None,
        written=(1,),
    )
    assert buffers == [("loop", big.numel()), ("multi", 3)]
