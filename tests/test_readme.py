"""The README's library example runs as written (on the bundled digits set, to stay fast)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_starts_with_the_two_commands() -> None:
    lines = README.read_text().splitlines()
    block = lines[lines.index("```bash") + 1 : lines.index("```")]
    assert [line.split("#")[0].strip() for line in block] == [
        "bash scripts/main.sh",
        "bash scripts/test.sh",
    ]
    assert lines.index("```bash") <= 2  # nothing but the title before them


def test_readme_library_example_runs() -> None:
    pytest.importorskip("sklearn")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README lost its python example"
    code = blocks[0].replace('"fashion-mnist"', '"digits"')
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    report = namespace["report"]
    assert report.n_samples == 256 and report.table2()["Total"] == pytest.approx(report.total)
    assert "layer1.0.bn1" in namespace["bd"].bias_utilization(report)
