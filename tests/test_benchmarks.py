"""The benchmark scripts start (imports, arguments) and the connectivity one runs end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("bench_*.py"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.stem)
def test_benchmark_explains_itself(script: Path) -> None:
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout


def test_connectivity_benchmark_runs_and_prints_ratios() -> None:
    script = BENCHMARKS[0].parent / "bench_connectivity.py"
    done = subprocess.run(
        [sys.executable, str(script), "--models", "mlp,vit", "--batch", "8", "--repeats", "1"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "C per-sample, hooks + guard (ours)" in done.stdout and "x fwd+bwd" in done.stdout
    assert "## vit" in done.stdout and "agreement: ours C =" in done.stdout


def test_integrations_benchmark_runs_and_prints_the_ratio() -> None:
    pytest.importorskip("lightning")
    pytest.importorskip("transformers")
    script = BENCHMARKS[0].parent / "bench_integrations.py"
    done = subprocess.run(
        [sys.executable, str(script), "--steps", "3", "--rounds", "1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("ratio with / without:") == 2


def test_robustness_tally_runs_its_cases_and_counts_them() -> None:
    script = BENCHMARKS[0].parent / "robustness_tally.py"
    done = subprocess.run(
        [sys.executable, str(script), "--cases", "2", "--kills", "0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok  unknown key" in done.stdout and "tally: 2/2 bad inputs refused" in done.stdout
