"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A run directory holds its checkpoints as ``checkpoints/step-000001234.pt``. Each one is a plain
dict that ``torch.load(..., weights_only=True)`` can read (tensors, state_dicts, containers and
python primitives only, never pickled objects), built by the engine and stamped here::

    {"format": "biasdecay.train/1", "step": 1234, "epoch": 3, "model": ..., "optimizer": ...,
     "rng": capture_rng_state(...), ...anything else the engine needs...}

Writes go through :func:`biasdecay.atomic.save_torch` (temporary file + rename) and old
checkpoints are pruned only after the new one is complete, so a crash at any moment leaves at
least one complete checkpoint. Reading never modifies the run directory.
"""

from __future__ import annotations

import random
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from biasdecay.atomic import save_torch
from biasdecay.errors import InputError
from biasdecay.nn.checkpoint import CheckpointError

__all__ = [
    "FORMAT",
    "REQUIRED_KEYS",
    "CheckpointError",
    "capture_rng_state",
    "check_resumable",
    "checkpoint_dir",
    "checkpoint_path",
    "latest_checkpoint",
    "list_checkpoints",
    "load_training_checkpoint",
    "newest_loadable_checkpoint",
    "restore_rng_state",
    "save_training_checkpoint",
]

FORMAT = "biasdecay.train/1"
# What the engine needs to continue a run; a checkpoint lacking any of these cannot be resumed.
REQUIRED_KEYS = ("model", "optimizer", "step", "epoch", "rng")
_MODEL_FORMAT = "biasdecay.model/1"  # written by biasdecay.nn.checkpoint.save_model
_ZIP_MAGIC = b"PK\x03\x04"
# At least 9 digits (``{step:09d}``); more once a run passes a billion steps. Temporary files of
# save_torch start with "." and end with ".tmp", so they never match.
_NAME = re.compile(r"step-(\d{9,})\.pt")


def checkpoint_dir(run_dir: str | Path) -> Path:
    """The folder that holds a run's checkpoints (``run_dir/checkpoints``)."""
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """Where the checkpoint of ``step`` lives (``run_dir/checkpoints/step-{step:09d}.pt``)."""
    return checkpoint_dir(run_dir) / f"step-{step:09d}.pt"


def _step_of(path: Path) -> int | None:
    match = _NAME.fullmatch(path.name)
    return int(match.group(1)) if match else None


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's checkpoint files, oldest step first.

    Args:
        run_dir: the run directory (not its ``checkpoints/`` folder).

    Returns:
        Paths of the files named ``step-<9+ digits>.pt``, sorted by step; temporary files and
        anything else in the folder are ignored. Empty when there is no ``checkpoints/`` folder.
    """
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        step = _step_of(path)
        if step is not None and path.is_file():
            found.append((step, path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint with the highest step, or ``None`` when the run has none.

    The file is not opened: see :func:`newest_loadable_checkpoint` for one that is known to load.
    """
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_training_checkpoint(
    run_dir: str | Path, step: int, state: dict[str, Any], *, keep: int = 2
) -> Path:
    """Write the checkpoint of ``step`` atomically, then prune the older ones.

    Pruning keeps the new file and the ``keep - 1`` newest checkpoints of earlier steps. Files of
    *later* steps are deleted too: they can only exist when the run was resumed from an earlier
    checkpoint, so they belong to an abandoned continuation (whose metrics were truncated) and
    would otherwise be picked by the next ``--resume``.

    Args:
        run_dir: the run directory; ``checkpoints/`` is created inside it when missing.
        step: the optimiser step the state was taken after (>= 0).
        state: the engine's state (see :data:`REQUIRED_KEYS`): tensors, state_dicts, containers and
            python primitives. Not modified; ``format`` and ``step`` are added to a copy.
        keep: how many checkpoints to keep, the new one included (>= 1).

    Returns:
        The path of the new checkpoint.

    Raises:
        ValueError: a negative step, ``keep < 1``, or ``state`` already carrying a different
            ``step`` or ``format``.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise InputError(f"step must be an int >= 0, got {step!r}")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise InputError(
            f"keep must be an int >= 1 (the new checkpoint is always kept), got {keep!r}"
        )
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    # A conflicting value would mean the engine and the file name disagree about the step.
    if "step" in state and state["step"] != step:
        raise InputError(
            f"state['step'] is {state['step']!r} but the checkpoint is for step {step}"
        )
    if "format" in state and state["format"] != FORMAT:
        raise InputError(f"state['format'] is {state['format']!r}; it is set to {FORMAT!r} here")

    path = checkpoint_path(run_dir, step)
    save_torch({**state, "format": FORMAT, "step": step}, path)

    # Only now, with the new file complete and in place, is anything deleted.
    found = list_checkpoints(run_dir)
    older = [p for p in found if _step_of(p) < step]
    doomed = older[: len(older) - (keep - 1)] if len(older) >= keep else []
    doomed += [p for p in found if _step_of(p) > step]
    for old in doomed:
        try:
            old.unlink(missing_ok=True)
        except OSError as exc:
            # A checkpoint that cannot be deleted costs disk space, not the run.
            warnings.warn(f"could not delete old checkpoint {old}: {exc}", stacklevel=2)
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def load_training_checkpoint(path: str | Path, *, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a training checkpoint safely (``weights_only=True``) and check its layout.

    Args:
        path: a ``step-*.pt`` file.
        map_location: passed to ``torch.load``; the default keeps every tensor on the CPU.

    Returns:
        The checkpoint dict (with ``format``, ``step`` and every key of :data:`REQUIRED_KEYS`).

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, holds python objects other
            than tensors/containers/primitives, is not a training checkpoint, or lacks required
            keys (all of them named). The message names the file.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist (check the path)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    with open(path, "rb") as f:
        magic = f.read(len(_ZIP_MAGIC))
    # torch.save writes a zip archive; anything else would reach torch's legacy pickle reader,
    # whose errors say nothing useful about a damaged file.
    if magic != _ZIP_MAGIC:
        what = "an empty file" if not magic else "not a torch zip archive"
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt: it is {what} (a file written by "
            "torch.save is one); it was probably cut short by a crash or is another kind of file"
        )
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, EOFError, KeyError, OSError, ...
        if "Weights only load failed" in str(exc):
            raise CheckpointError(
                f"checkpoint {path} could not be loaded safely: it holds python objects other "
                "than tensors, containers and plain values, so it was not written by "
                "save_training_checkpoint (it is never loaded with weights_only=False)"
            ) from exc
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({exc.__class__.__name__}: "
            f"{_first_line(exc)}); it was probably cut short by a crash or a full disk"
        ) from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        found = obj.get("format") if isinstance(obj, dict) else None
        if found == _MODEL_FORMAT:
            what = "a model checkpoint (weights only, from save_model), not a training one"
        elif found is not None:
            what = f"of format {found!r}, expected {FORMAT!r}"
        elif isinstance(obj, dict):
            what = f"a dict without a 'format' entry, expected format {FORMAT!r}"
        else:
            what = f"a {type(obj).__name__}, expected a dict of format {FORMAT!r}"
        raise CheckpointError(f"{path} is not a biasdecay training checkpoint: it is {what}")
    missing = [key for key in REQUIRED_KEYS if key not in obj]
    if missing:
        raise CheckpointError(
            f"training checkpoint {path} lacks required entries: {', '.join(missing)} "
            f"(a resumable checkpoint has {', '.join(REQUIRED_KEYS)})"
        )
    return obj


def newest_loadable_checkpoint(
    run_dir: str | Path, *, map_location: str | torch.device = "cpu"
) -> tuple[Path, list[tuple[Path, str]], dict[str, Any]]:
    """The newest checkpoint that loads, the newer ones that did not, and its loaded state.

    Each candidate is loaded in full, newest first, until one succeeds; that state is returned
    so the caller does not read the file a second time.

    Args:
        run_dir: the run directory.
        map_location: where the tensors of the state go.

    Returns:
        ``(path, skipped, state)``: the newest loadable checkpoint, newest first the newer
        checkpoints passed over with the reason each failed (for the engine to log), and the
        loaded state.

    Raises:
        CheckpointError: the run has no checkpoints, or none of them loads (each reason listed).
    """
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(
            f"nothing to resume: {checkpoint_dir(run_dir)} has no step-*.pt checkpoints; "
            "start a new run without --resume"
        )
    skipped: list[tuple[Path, str]] = []
    for path in reversed(found):
        try:
            state = load_training_checkpoint(path, map_location=map_location)
        except CheckpointError as exc:
            skipped.append((path, str(exc)))
            continue
        return path, skipped, state
    reasons = "; ".join(f"{p.name}: {why}" for p, why in skipped)
    raise CheckpointError(
        f"none of the {len(found)} checkpoints in {checkpoint_dir(run_dir)} can be loaded "
        f"({reasons}); start a new run without --resume"
    )


def check_resumable(run_dir: str | Path) -> Path:
    """Check a ``--resume RUN_DIR`` request before any work starts.

    There is no silent fallback to an older checkpoint: resuming from it would redo steps the
    user may believe were done, so a corrupt newest checkpoint is reported together with the
    newest loadable one and the user decides (moving the corrupt file out of ``checkpoints/``
    makes the next ``--resume`` pick the older one).

    Args:
        run_dir: the run directory to continue.

    Returns:
        The newest checkpoint, known to load.

    Raises:
        CheckpointError: the directory does not exist, has no checkpoints, or its newest
            checkpoint cannot be loaded (the message names it and the previous loadable one).
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise CheckpointError(
            f"cannot resume: run directory {run_dir} does not exist (check the path, or start a "
            "new run without --resume)"
        )
    if not run_dir.is_dir():
        raise CheckpointError(f"cannot resume: {run_dir} is not a directory")
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(
            f"nothing to resume: {checkpoint_dir(run_dir)} has no step-*.pt checkpoints; "
            "start a new run without --resume"
        )
    newest = found[-1]
    try:
        load_training_checkpoint(newest)
    except CheckpointError as exc:
        try:
            previous, _, _ = newest_loadable_checkpoint(run_dir)
        except CheckpointError:
            advice = "no older checkpoint loads either; start a new run without --resume"
        else:
            advice = (
                f"the newest loadable one is {previous.name} (step {_step_of(previous)}); to "
                f"resume from it, move {newest.name} out of {checkpoint_dir(run_dir)} and run "
                "--resume again"
            )
        raise CheckpointError(
            f"cannot resume from {newest}: {exc}. Older checkpoints are listed in "
            f"{checkpoint_dir(run_dir)}; {advice}"
        ) from exc
    return newest


def capture_rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Snapshot every random number generator a run draws from.

    Covers torch's CPU generator, every CUDA device's generator when CUDA has been initialised
    (an uninitialised CUDA has never drawn, and querying it would initialise it), python's
    ``random``, and the named extra generators (data shuffling, augmentation, ...). numpy's global
    state is not captured: the library does not draw from it, and its state is not loadable with
    ``weights_only=True``.

    Args:
        generators: extra generators by name; their states are restored by the same names.

    Returns:
        A dict of tensors and primitives, safe for ``torch.load(..., weights_only=True)``.
    """
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        # The Mersenne Twister words are < 2**32, so int64 holds them exactly; a tuple of ints
        # would not survive a weights_only load as a tuple anyway.
        "python": {
            "version": version,
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "cuda": [],
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(
    state: dict[str, Any], generators: dict[str, torch.Generator] | None = None
) -> None:
    """Put every generator back to the state :func:`capture_rng_state` recorded.

    CUDA states are restored for the devices present in both the checkpoint and this machine;
    a different device count (or no CUDA) gives a warning, because the run then continues but
    its random draws no longer match an uninterrupted run.

    Args:
        state: the dict from :func:`capture_rng_state` (possibly after a save/load round trip).
        generators: extra generators by name, restored from the states of the same names.

    Raises:
        CheckpointError: a generator asked for has no saved state, or ``state`` lacks a part.
    """
    try:
        torch_state = state["torch"]
        python = state["python"]
    except (KeyError, TypeError) as exc:
        raise CheckpointError(
            f"the rng state has no {exc} entry (it was not made by capture_rng_state)"
        ) from exc
    torch.set_rng_state(torch_state.cpu())
    random.setstate(
        (
            int(python["version"]),
            tuple(int(x) for x in python["state"].tolist()),
            python["gauss_next"],
        )
    )

    cuda_states = list(state.get("cuda", []))
    if cuda_states:
        if not torch.cuda.is_available():
            warnings.warn(
                f"the checkpoint holds the RNG states of {len(cuda_states)} CUDA device(s) but "
                "CUDA is not available: they are not restored",
                stacklevel=2,
            )
        else:
            count = torch.cuda.device_count()
            if count != len(cuda_states):
                warnings.warn(
                    f"the checkpoint holds the RNG states of {len(cuda_states)} CUDA device(s) "
                    f"but {count} are visible: restoring the first {min(count, len(cuda_states))}",
                    stacklevel=2,
                )
            for index, device_state in enumerate(cuda_states[:count]):
                torch.cuda.set_rng_state(device_state.cpu(), index)

    saved = state.get("generators", {})
    wanted = generators or {}
    missing = [name for name in wanted if name not in saved]
    if missing:
        raise CheckpointError(
            f"the rng state has no saved state for generator(s) {', '.join(missing)} "
            f"(saved: {', '.join(saved) or 'none'})"
        )
    for name, generator in wanted.items():
        generator.set_state(saved[name].cpu())
