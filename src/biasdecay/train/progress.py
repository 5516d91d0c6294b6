"""Training progress: a tqdm bar on a terminal, periodic one-line messages in a log file."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from biasdecay.errors import InputError

__all__ = ["Progress"]


def _format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _format_value(value: Any) -> str:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Progress:
    """Training progress: a tqdm bar in a terminal, periodic one-line messages otherwise.

    A bar redrawn with carriage returns turns a log file (batch jobs, ``torchrun`` output) into
    one huge line, so without a terminal the progress goes through ``log`` every ``log_every``
    steps instead, e.g. ``train 300/1000 (30%) | loss 0.4123 | 12.5 steps/s | eta 56.0s``.

    Args:
        total_steps: the step the run ends at.
        enabled: ``False`` on non-zero ranks: nothing is shown.
        initial: the step a resumed run starts from.
        desc: the label in front of the bar or message.
        log_every: steps between messages without a terminal; by default about 20 per run.
        log: where messages go without a terminal (default: a line on stderr).
        tty: force the bar (``True``) or the messages (``False``); by default the bar is shown
            when stderr is a terminal.
    """

    def __init__(
        self,
        total_steps: int,
        *,
        enabled: bool,
        initial: int = 0,
        desc: str = "train",
        log_every: int | None = None,
        log: Callable[[str], None] | None = None,
        tty: bool | None = None,
    ):
        if total_steps < 0 or initial < 0:
            raise InputError(f"total_steps and initial must be >= 0, got {total_steps}, {initial}")
        if log_every is not None and log_every < 1:
            raise InputError(f"log_every must be >= 1, got {log_every}")
        self.total = total_steps
        self.n = initial
        self.enabled = enabled
        self.desc = desc
        self.log_every = log_every or max(1, math.ceil(total_steps / 20))
        self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._initial = initial
        self._start = time.perf_counter()
        self._postfix: dict[str, Any] = {}
        self._last_logged = initial
        self._bar: Any = None
        if tty is None:
            tty = sys.stderr is not None and sys.stderr.isatty()
        if enabled and tty:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total_steps,
                initial=initial,
                desc=desc,
                dynamic_ncols=True,
                file=sys.stderr,
                unit="step",
            )

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Advance by ``n`` steps; ``postfix`` values (loss, accuracy, lr, ...) are shown beside.

        Without a terminal, a message is logged whenever a multiple of ``log_every`` is passed
        and at the last step; it shows the latest postfix values.
        """
        if not self.enabled:
            return
        previous = self.n
        self.n += n
        if postfix:
            self._postfix.update(postfix)
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(
                    {k: _format_value(v) for k, v in self._postfix.items()}, refresh=False
                )
            self._bar.update(n)
            return
        crossed = self.n // self.log_every > previous // self.log_every
        if crossed or (self.n >= self.total > previous):
            self._log_line()

    def _log_line(self) -> None:
        elapsed = time.perf_counter() - self._start
        done = self.n - self._initial
        rate = done / elapsed if elapsed > 0 else math.inf
        parts = [f"{self.desc} {self.n}/{self.total}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts += [f"{k} {_format_value(v)}" for k, v in self._postfix.items()]
        if done > 0:
            parts.append(f"{rate:.3g} steps/s")
            if self.n < self.total:
                parts.append(f"eta {_format_seconds((self.total - self.n) / rate)}")
            else:
                parts.append(f"took {_format_seconds(elapsed)}")
        self._log(" | ".join(parts))
        self._last_logged = self.n

    def write(self, msg: str) -> None:
        """Print a message without breaking the bar (events: evaluation, divergence, ...)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(msg, file=sys.stderr)
        else:
            self._log(msg)

    def close(self) -> None:
        """Close the bar; without a terminal, log the final step unless it was just logged."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.n != self._last_logged:
            self._log_line()
        self.enabled = False  # closing twice, or updating after, does nothing

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
