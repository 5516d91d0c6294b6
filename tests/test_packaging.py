"""The package builds as a wheel and an sdist, and the wheel works in a fresh environment."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    pytest.importorskip("build")
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "src"):  # a copy: building writes build/
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, source / name)
    out = source / "dist"
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return out


def test_wheel_and_sdist_hold_the_package(dist) -> None:
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    names = zipfile.ZipFile(wheel).namelist()
    for module in (
        "biasdecay/cli.py",
        "biasdecay/integrations/lightning.py",
        "biasdecay/integrations/transformers.py",
        "biasdecay/roles.py",
    ):
        assert module in names, module
    assert not [n for n in names if n.startswith("tests/")]
    with tarfile.open(sdist) as archive:
        assert any(n.endswith("src/biasdecay/__init__.py") for n in archive.getnames())


def test_the_wheel_installs_and_runs_in_a_fresh_venv(dist, tmp_path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # torch (and numpy) already present, as the user has them: this environment's site
    # directory is appended after the fresh venv's own, so the wheel, not this checkout, is found.
    fresh = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(fresh) / "torch-present.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    (wheel,) = dist.glob("*.whl")
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        check=True, timeout=300, capture_output=True,
    )  # fmt: skip
    cli = venv / "bin" / "biasdecay"
    version = subprocess.run([cli, "--version"], capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.strip() == "biasdecay 0.1.0"
    listing = subprocess.run([cli, "list", "studies"], capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0 and "table4" in listing.stdout
    where = subprocess.run(
        [python, "-c", "import biasdecay; print(biasdecay.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(venv) in where, where  # the installed wheel, not the source tree
