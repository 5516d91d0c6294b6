"""Strict JSON: non-finite floats as strings and back, scalars from tensors, enums by value."""

from __future__ import annotations

import enum
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from biasdecay.strict_json import restore_nonfinite, to_json_data


class Colour(enum.Enum):
    RED = "red"


def test_converted_data_pass_a_strict_dump_and_come_back() -> None:
    value = {
        "nan": math.nan,
        "inf": torch.tensor(math.inf),
        "neg": [-math.inf, np.float32(0.5), np.int64(3)],
        "nested": {1: (True, None, "s")},
        Colour.RED: Colour.RED,
        "path": Path("a/b"),
    }
    data = to_json_data(value)
    text = json.dumps(data, allow_nan=False)
    assert json.loads(text) == {
        "nan": "nan",
        "inf": "inf",
        "neg": ["-inf", 0.5, 3],
        "nested": {"1": [True, None, "s"]},
        "red": "red",
        "path": "a/b",
    }
    back = restore_nonfinite(json.loads(text))
    assert math.isnan(back["nan"]) and back["inf"] == math.inf and back["neg"][0] == -math.inf


def test_what_cannot_be_written_is_named_by_its_place() -> None:
    with pytest.raises(TypeError, match=r"record\.layers\[1\]: a tensor of shape \(2,\)"):
        to_json_data({"layers": [1.0, torch.ones(2)]}, "record")
    with pytest.raises(TypeError, match=r"value\.a: an array of shape \(3,\)"):
        to_json_data({"a": np.ones(3)})
    with pytest.raises(TypeError, match="cannot write a set"):
        to_json_data({1, 2})
