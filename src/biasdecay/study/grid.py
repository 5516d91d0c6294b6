"""Read a sweep grid from a TOML file: a base config and named runs with overrides and labels.

base = "configs/fashion_resnet18_cpu.toml"     # relative to this file; optional
set = ["run.epochs=2"]                         # applied to every run; optional

[runs.no_bias_decay]
set = ["policy.name=no_bias_decay"]
labels = { policy = "no bias decay" }

[runs.beta_decay]
set = ["policy.name=beta_decay", "policy.beta=1.0"]
labels = { policy = "β decay (1.0)" }
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from biasdecay.study.sweep import RunSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

_TOP_KEYS = ("base", "set", "runs")
_RUN_KEYS = ("set", "labels")


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where} must be a list of 'section.key=value' strings, got {value!r}")
    return tuple(value)


def load_grid(path: str | Path) -> tuple[Path | None, list[RunSpec]]:
    """The base config (resolved against the grid file's folder) and the runs of a grid file.

    Raises:
        ValueError: missing/invalid file, unknown keys (listed with the valid ones), no runs,
            or values of the wrong kind, each naming where in the file.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ValueError(f"grid file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"grid file {path} is not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - set(_TOP_KEYS))
    if unknown:
        raise ValueError(
            f"{path}: unknown key(s) {', '.join(unknown)}; valid top-level keys: "
            f"{', '.join(_TOP_KEYS)}"
        )
    base = None
    if "base" in data:
        base = (path.parent / data["base"]).resolve()
        if not base.is_file():
            raise ValueError(f"{path}: base config {data['base']!r} not found (looked at {base})")
    shared = _strings(data.get("set", []), f"{path}: set")
    runs_table = data.get("runs")
    if not isinstance(runs_table, dict) or not runs_table:
        raise ValueError(f"{path}: no runs; add at least one [runs.NAME] table")
    runs = []
    for name, table in runs_table.items():
        where = f"{path}: [runs.{name}]"
        if not isinstance(table, dict):
            raise ValueError(f"{where} must be a table with 'set' and 'labels'")
        extra = sorted(set(table) - set(_RUN_KEYS))
        if extra:
            raise ValueError(f"{where}: unknown key(s) {', '.join(extra)}; valid: set, labels")
        labels = table.get("labels", {})
        if not isinstance(labels, dict):
            raise ValueError(f"{where}: labels must be a table, got {labels!r}")
        runs.append(RunSpec(name, shared + _strings(table.get("set", []), f"{where} set"), labels))
    return base, runs
