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

from biasdecay.study.sweep import RunSpec, SweepError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

_TOP_KEYS = ("base", "set", "runs")
_RUN_KEYS = ("set", "labels")


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SweepError(f"{where} must be a list of 'section.key=value' strings, got {value!r}")
    return tuple(value)


def load_grid(path: str | Path) -> tuple[Path | None, list[RunSpec]]:
    """The base config (resolved against the grid file's folder) and the runs of a grid file.

    Args:
        path: the grid file.

    Returns:
        ``(base config or None, the runs)``.

    Raises:
        SweepError: missing, unreadable or invalid file, unknown keys (listed with the valid
            ones), no runs, a bad run name, or values of the wrong kind, each naming where in
            the file.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SweepError(
            f"grid file {path} does not exist; give the path of a grid TOML file"
        ) from exc
    except OSError as exc:
        raise SweepError(f"grid file {path} cannot be read: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SweepError(f"grid file {path} is not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - set(_TOP_KEYS))
    if unknown:
        raise SweepError(
            f"{path}: unknown key(s) {', '.join(unknown)}; valid top-level keys: "
            f"{', '.join(_TOP_KEYS)}"
        )
    base = None
    if "base" in data:
        if not isinstance(data["base"], str):
            raise SweepError(
                f"{path}: base must be the path of a config TOML file, got {data['base']!r}"
            )
        base = (path.parent / data["base"]).resolve()
        if not base.is_file():
            raise SweepError(f"{path}: base config {data['base']!r} not found (looked at {base})")
    shared = _strings(data.get("set", []), f"{path}: set")
    runs_table = data.get("runs")
    if not isinstance(runs_table, dict) or not runs_table:
        raise SweepError(f"{path}: no runs; add at least one [runs.NAME] table")
    runs = []
    for name, table in runs_table.items():
        where = f"{path}: [runs.{name}]"
        if not isinstance(table, dict):
            raise SweepError(f"{where} must be a table with 'set' and 'labels'")
        extra = sorted(set(table) - set(_RUN_KEYS))
        if extra:
            raise SweepError(f"{where}: unknown key(s) {', '.join(extra)}; valid: set, labels")
        labels = table.get("labels", {})
        if not isinstance(labels, dict):
            raise SweepError(f"{where}: labels must be a table, got {labels!r}")
        runs.append(RunSpec(name, shared + _strings(table.get("set", []), f"{where} set"), labels))
    return base, runs
