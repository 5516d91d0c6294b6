"""What a run is and where it ran: ``config.toml``, ``environment.json``, ``param_groups.txt``.

Written once when a run starts, next to its metrics: the resolved configuration re-runs the
experiment, the environment says on what (versions, device, threads, git commit), and the group
table says which parameter decays how.
"""

from __future__ import annotations

import platform
import socket
import subprocess
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from biasdecay.atomic import write_json, write_text

__all__ = ["environment_info", "write_run_info"]


def _git_commit(cwd: str | Path | None = None) -> str | None:
    """``git rev-parse HEAD`` of ``cwd`` (default: the working directory), or ``None``."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):  # no git, or it hung
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None


def environment_info(device: str | torch.device, world_size: int) -> dict[str, Any]:
    """Where and with what a run ran, for ``environment.json``.

    Args:
        device: the device the run trains on (this rank's).
        world_size: the number of processes.

    Returns:
        ``time`` (ISO 8601, UTC), ``hostname``, ``python``, ``platform``, ``torch``, ``cuda`` and
        ``cudnn`` (versions, ``None`` without them), ``device``, ``device_name`` (the GPU's name,
        ``None`` otherwise), ``torch_threads``, ``world_size`` and ``git_commit`` (of the working
        directory, ``None`` when it is not a git checkout or git is missing).
    """
    device = torch.device(device)
    device_name = None
    if device.type == "cuda" and torch.cuda.is_available():
        device_name = torch.cuda.get_device_name(device)
    cudnn = None
    if torch.backends.cudnn.is_available():
        cudnn = torch.backends.cudnn.version()
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "device": str(device),
        "device_name": device_name,
        # CPU timings depend on it as much as on the processor.
        "torch_threads": torch.get_num_threads(),
        "world_size": world_size,
        "git_commit": _git_commit(),
    }


def write_run_info(
    run_dir: str | Path, *, config_toml: str, environment: Mapping[str, Any], groups_summary: str
) -> None:
    """Record what a run is: ``config.toml``, ``environment.json``, ``param_groups.txt``.

    Args:
        run_dir: the run directory (created when missing).
        config_toml: the resolved configuration, as TOML text (it re-runs the experiment).
        environment: usually :func:`environment_info`.
        groups_summary: the decay policy's assignment table (which parameter decays how).

    Raises:
        FileWriteError: a file could not be written.
    """
    run_dir = Path(run_dir)

    def ended(text: str) -> str:
        return text if text.endswith("\n") else text + "\n"

    write_text(run_dir / "config.toml", ended(config_toml))
    write_json(run_dir / "environment.json", dict(environment), where="environment")
    write_text(run_dir / "param_groups.txt", ended(groups_summary))
