"""The benchmark scripts start (imports, arguments) and the connectivity one runs end to end."""

from __future__ import annotations

import re
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


def run_script(name: str, *args: str, timeout: int) -> str:
    """Run ``benchmarks/<name>`` with ``args``; its stdout, after checking it succeeded."""
    script = BENCHMARKS[0].parent / name
    done = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_connectivity_benchmark_runs_and_prints_ratios() -> None:
    out = run_script(
        "bench_connectivity.py", "--models", "mlp,vit,torch-vit", "--batch", "8",
        "--repeats", "1", "--breakdown", timeout=240,
    )  # fmt: skip
    assert "C per-sample, hooks + guard (ours)" in out and "x fwd+bwd" in out
    assert "## vit" in out and "agreement: ours C =" in out
    assert "| allocator: " in out.splitlines()[1]
    assert "median x   faults" in out  # each row's page faults per timed call
    assert out.count("hook path by stage") == 3 and "backward to layer outputs" in out
    assert "terms: Linear" in out and "guard: comparison" in out
    assert out.count("reference, not in the total: the batch weight-gradient kernels") == 3
    # torch's own encoder layer: its attention on the hook path; opacus (where installed: an
    # extra) fails on it, and the benchmark says so
    assert "## torch-vit" in out and "terms: MultiheadAttention" in out
    assert "opacus hooks fails on this model" in out or "opacus is not installed" in out


def test_connectivity_benchmark_summarises_several_runs() -> None:
    out = run_script(
        "bench_connectivity.py", "--models", "mlp", "--batch", "4", "--repeats", "1",
        "--runs", "2", timeout=180,
    )  # fmt: skip
    assert "### run 1 of 2" in out and "### run 2 of 2" in out
    summary = out.split("## over 2 runs", 1)[1].splitlines()
    assert summary[1].split() == [
        "model",
        "ours,",
        "median",
        "x",
        "<=",
        "1.3",
        "opacus",
        "/",
        "ours",
    ]
    name, ours, under, of, runs, lead = summary[2].split()
    low, high = (float(v) for v in ours.split("-"))
    assert name == "mlp" and 0 < low <= high and (of, runs) == ("of", "2")
    assert 0 <= int(under) <= 2
    assert lead == "-" or float(lead.split("-")[0]) > 0  # "-" where opacus is not installed


def test_conv_routes_benchmark_times_every_route_of_every_layer() -> None:
    out = run_script("bench_conv_routes.py", "--batch", "4", "--repeats", "1", timeout=180)
    assert "summed over the model's 20 conv layers" in out
    assert "128x128x3x3 on 4x4, stride 1            3" in out
    for route in ("grouped", "im2col", "im2col channels-last"):
        assert f"per-sample, the best without {route}" in out


def test_conv_routes_benchmark_times_the_routes_of_linear_layers_on_sequences() -> None:
    out = run_script(
        "bench_conv_routes.py", "--model", "vit", "--batch", "4", "--repeats", "1", timeout=180
    )  # fmt: skip
    assert "summed over the model's 9 Linear layers on sequences" in out
    assert "Linear 384x128 on 64 tokens             2" in out
    assert "per-sample, the best without bmm" in out


def test_hessian_benchmark_times_our_hvp_methods() -> None:
    out = run_script(
        "bench_hessian.py", "--data", "synthetic", "--n-samples", "64", "--batch-size", "32",
        "--train-steps", "2", "--skip-variance", "--skip-eigenthings", "--skip-peers",
        timeout=180,
    )  # fmt: skip
    assert "## (d) our HVP methods" in out and "fwd-over-rev, chunk 32" in out
    assert "in use: forward-over-reverse in chunks of 32 for more than 8 vectors" in out


def test_partial_formulas_benchmark_times_both_paths() -> None:
    """Hugging Face's ViT takes the hook path for every parameter (its class token and position
    table expanded over the batch); Swin's position tables alone go to torch.func."""
    pytest.importorskip("transformers")
    out = run_script(
        "bench_partial_formulas.py", "--models", "vit-tiny,swin", "--batch", "4",
        "--rounds", "1", "--no-memory", timeout=300,
    )  # fmt: skip
    assert "## vit-tiny" in out and "auto: method hooks," in out
    assert "## swin" in out and "auto: method hooks+vmap," in out
    assert "4 of 79 parameters through torch.func under auto" in out
    assert out.count("C per-sample, vmap (torch.func throughout)") == 2


def test_mlp_floor_benchmark_agrees_with_the_library_and_times_every_row() -> None:
    out = run_script(
        "bench_mlp_floor.py", "--widths", "20,16,5", "--batch", "12", "--repeats", "1",
        timeout=120,
    )  # fmt: skip
    agreement = next(line for line in out.splitlines() if line.startswith("agreement:"))
    values = [float(v) for v in re.findall(r"(?:ours|floor) (\d+\.\d+)", agreement)]
    assert len(values) == 4 and "floor guard passes: True" in agreement
    assert values[0] == pytest.approx(values[1], rel=1e-5)  # per-sample C
    assert values[2] == pytest.approx(values[3], rel=1e-5)  # C_m
    assert "the guard's autograd pass alone" in out and "C_m, ours" in out


def test_bad_widths_are_refused_with_the_fix() -> None:
    script = BENCHMARKS[0].parent / "bench_mlp_floor.py"
    done = subprocess.run(
        [sys.executable, str(script), "--widths", "20"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "two or more positive widths" in done.stderr


def test_hugging_face_zoo_agrees_with_the_loop() -> None:
    pytest.importorskip("transformers")
    out = run_script("hf_zoo.py", "--models", "vit,opt,convnext", "--dtype", "float32", timeout=300)
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert float(rows["vit"][1]) < 1e-5 and rows["vit"][2] == "hooks"
    # its channels-first LayerNorm has the formula, its layer scale is taken expanded
    assert float(rows["convnext"][1]) < 1e-5 and rows["convnext"][2] == "hooks"
    assert float(rows["opt"][1]) < 1e-5 and rows["opt"][2] == "hooks+vmap"
    assert "embed_positions" in out  # OPT's position table alone leaves the hook path


def test_integrations_benchmark_runs_and_prints_the_ratio() -> None:
    pytest.importorskip("lightning")
    pytest.importorskip("transformers")
    out = run_script("bench_integrations.py", "--steps", "3", "--rounds", "1", timeout=300)
    assert out.count("ratio with / without:") == 2


def test_robustness_tally_runs_its_cases_and_counts_them() -> None:
    out = run_script("robustness_tally.py", "--cases", "2", "--kills", "0", timeout=120)
    assert "ok  unknown key" in out and "tally: 2/2 bad inputs refused" in out


def benchmarks_common():
    """The benchmarks' shared module (``benchmarks/_common.py``), imported as they import it."""
    sys.path.insert(0, str(BENCHMARKS[0].parent))
    try:
        import _common
    finally:
        sys.path.pop(0)
    return _common


def test_benchmark_header_names_the_instruction_set_caps(monkeypatch) -> None:
    """A timing made with torch's kernels capped (a stand-in for a CPU without AVX-512) says
    so in its header, with each cap, and says nothing of caps that are not set."""
    common = benchmarks_common()
    for name in common._ISA_CAPS:
        monkeypatch.delenv(name, raising=False)
    fused_kernel = common.fused_kernel
    plain = fused_kernel()
    assert plain.startswith("torch kernels: ") and "=" not in plain.split("|")[0]
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    capped = fused_kernel()
    assert "(ONEDNN_MAX_CPU_ISA=AVX2, MKL_ENABLE_INSTRUCTIONS=AVX2)" in capped


def test_benchmark_header_names_the_heap_settings(monkeypatch) -> None:
    """A timing made with the C heap told to keep freed memory (which moves opacus' rows) says
    so in its header, and a plain one says that no heap setting is set."""
    common = benchmarks_common()
    for name in common._ALLOCATOR_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    allocator = common.allocator
    assert allocator() == "allocator: default settings"
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "4294967296")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "33554432")
    assert allocator() == (
        "allocator: MALLOC_MMAP_THRESHOLD_=33554432, MALLOC_TRIM_THRESHOLD_=4294967296"
    )
