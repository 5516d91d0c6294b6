"""docs/recipe.md's training loop runs as written (on the bundled digits set, one small epoch)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

RECIPE = Path(__file__).resolve().parents[1] / "docs" / "recipe.md"


def test_recipe_runs() -> None:
    pytest.importorskip("sklearn")
    (code,) = re.findall(r"```python\n(.*?)```", RECIPE.read_text(), flags=re.S)
    settings = "batch_size, epochs, weight_decay = 1024, 2, 0.01"
    assert settings in code and '"fashion-mnist"' in code
    code = code.replace(settings, "batch_size, epochs, weight_decay = 128, 1, 0.01")
    code = code.replace('"fashion-mnist"', '"digits"')
    namespace: dict = {}
    exec(compile(code, "docs/recipe.md", "exec"), namespace)  # noqa: S102 - our own doc
    controller, scheduler = namespace["controller"], namespace["scheduler"]
    steps = namespace["total_steps"]
    assert controller.step_count == steps == 11
    assert len(controller.history()["steps"]) == steps
    assert scheduler.get_last_lr()[0] == pytest.approx(0.0)  # polynomial decay ends at 0
    assert any(type(m).__name__ == "GhostBatchNorm2d" for m in namespace["model"].modules())
    assert re.search(r"\d+\.\d+", str(namespace["loss"].item()))
