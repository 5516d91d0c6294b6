"""The training loop: logical batches over ranks and micro-batches, eval, checkpoints, resume.

One step = one logical batch of ``run.batch_size`` samples = world size × accumulation steps ×
micro-batch. Rank r trains on its contiguous slice of every logical batch (the loader's
sharding), gradients are accumulated locally under ``no_sync`` and averaged by DDP on the last
micro-batch, then the adaptive β decay controller and the optimiser act once.

Nothing here synchronises with the host in the middle of a step: losses and accuracies
accumulate on the device and are read every ``run.log_every`` steps, where divergence is also
checked. A run that diverges stops, keeps its last good checkpoint, and is marked ``diverged``
in its summary: the paper's "-".
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from biasdecay.decay import format_group_summary
from biasdecay.errors import BiasDecayError
from biasdecay.nn.checkpoint import CheckpointError, save_model
from biasdecay.train import components as C
from biasdecay.train.checkpoint import (
    capture_rng_state,
    list_checkpoints,
    newest_loadable_checkpoint,
    restore_rng_state,
    save_training_checkpoint,
)
from biasdecay.train.config import (
    ConfigError,
    TrainConfig,
    config_differences,
    config_from_dict,
    config_to_dict,
    dump_toml,
    format_differences,
)
from biasdecay.train.distributed import (
    DistContext,
    all_reduce_sum,
    average_buffers,
    barrier,
)
from biasdecay.train.metrics import MetricsWriter
from biasdecay.train.monitors import SharpnessTracker
from biasdecay.train.process import RunLock
from biasdecay.train.progress import Progress
from biasdecay.train.run_info import environment_info, write_run_info
from biasdecay.train.summary import write_summary


def _summary_status(run_dir: Path) -> str | None:
    """The status in ``run_dir/summary.json``, or None when it is missing or unreadable."""
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


class StorageError(BiasDecayError, OSError):
    """The run directory could not be written; the message says what is kept and what to do."""


class Diverged(BiasDecayError, RuntimeError):
    """The training loss became NaN/inf or exceeded ``run.divergence_loss``."""

    exit_status = 3  # apart from bad input (2): the run itself went wrong, and is kept


class Trainer:
    """Train one configured run; :meth:`fit` runs it (or resumes it) to the end.

    Args:
        cfg: the full configuration.
        ctx: this process's place in the world (see :func:`init_distributed`).
        log: where one-line messages go (rank 0 only).
        progress: a progress bar (rank 0, on a terminal) instead of periodic log lines.
        on_step: called as ``on_step(trainer, step)`` after every optimiser step; tests use it
            to interrupt a run at a chosen point.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        ctx: DistContext | None = None,
        *,
        log: Callable[[str], None] = print,
        progress: bool = False,
        on_step: Callable[[Trainer, int], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.ctx = ctx or DistContext()
        self.log = log if self.ctx.is_main else (lambda _msg: None)
        self.on_step = on_step
        self.show_progress = progress
        self.run_dir = Path(cfg.run.out)
        self.plan = C.plan_batches(cfg, self.ctx)
        train, test = C.load_data(cfg)
        self._splits = (train, test)  # the measures draw their fixed subset from these
        self._measure_data: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.synthetic = train.synthetic
        self.spec = C.model_spec(cfg, train)
        self.train_loader, self.eval_loader = C.make_loaders(cfg, train, test, self.plan, self.ctx)
        self.steps_per_epoch = len(self.train_loader)
        self.total_steps = C.total_steps(cfg, self.steps_per_epoch)
        self.model = C.build_model(cfg, self.spec, self.ctx)
        self.optimizer, self.policy, self.controller = C.build_optimization(cfg, self.model)
        self.scheduler = C.build_scheduler(
            cfg, self.optimizer, self.total_steps, self.steps_per_epoch
        )
        self.tracker = SharpnessTracker(self.model, cfg.run.track_every, self.controller)
        self.autocast = C.autocast_dtype(cfg, self.ctx.device)
        if self.ctx.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: autotune the conv kernels once
        self.net = self._wrap(self.model)
        self.step = 0
        self._saved_step = -1
        self._finite_step = -1  # the last step whose parameters were checked finite
        self._measured: set[int] = set()

    def _wrap(self, model: nn.Module) -> nn.Module:
        """DDP across ranks, then torch.compile when asked for."""
        net: nn.Module = model
        if self.ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            # Running statistics stay per rank and are averaged before evaluation, instead of
            # being broadcast from rank 0 at every forward.
            net = DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)
        if self.cfg.run.compile:
            net = torch.compile(net)
        return net

    # ------------------------------------------------------------------ state and checkpoints
    def state(self, epoch: int, batch_in_epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "adaptive": self.controller.state_dict() if self.controller else None,
            "rng": capture_rng_state(),
            "config": config_to_dict(self.cfg),
        }

    def save(self, epoch: int, batch_in_epoch: int) -> None:
        """Checkpoint the run; refuses (raises :class:`Diverged`) when a parameter is not finite.

        The finiteness check runs here, at every save and only there, so no checkpoint ever
        holds NaN or inf and the training step itself never waits for the host.
        """
        if self.step == self._saved_step:  # e.g. a checkpoint step that is also the last step
            return
        self._check_finite()
        self._saved_step = self.step
        if self.ctx.is_main:
            path = save_training_checkpoint(
                self.run_dir,
                self.step,
                self.state(epoch, batch_in_epoch),
                keep=self.cfg.run.keep_checkpoints,
            )
            self.metrics.log({"kind": "event", "step": self.step, "event": f"saved {path.name}"})
        barrier(self.ctx)

    def restore(self) -> tuple[int, int]:
        """Load the newest loadable checkpoint of the run; returns (epoch, batch_in_epoch)."""
        path, skipped, state = newest_loadable_checkpoint(
            self.run_dir, map_location=self.ctx.device
        )
        if skipped:  # never fall back silently: the user decides what to do with the file
            bad, why = skipped[0]
            raise CheckpointError(
                f"cannot resume {self.run_dir}: the newest checkpoint {bad} is unreadable "
                f"({why}). The newest loadable one is {path.name}; move {bad.name} out of "
                f"{bad.parent} and resume again to continue from it."
            )
        self._check_same_run(state.get("config"), path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.controller is not None and state.get("adaptive") is not None:
            self.controller.load_state_dict(state["adaptive"])
        restore_rng_state(state["rng"])
        self.step = self._saved_step = int(state["step"])
        self.log(f"resume: {path} (step {self.step} of {self.total_steps})")
        return int(state["epoch"]), int(state["batch_in_epoch"])

    def _check_same_run(self, saved: dict[str, Any] | None, path: Path) -> None:
        """Refuse to continue a checkpoint under settings other than those that made it."""
        if saved is None:
            return
        try:
            made_by = config_from_dict(saved, source=str(path))
        except ConfigError as err:
            raise CheckpointError(
                f"cannot resume from {path}: its settings do not load ({err})"
            ) from None
        differences = config_differences(made_by, self.cfg)
        if differences:
            raise CheckpointError(
                f"cannot resume {self.run_dir}: {path.name} was made by other settings than "
                f"this run's: {format_differences(differences, 'checkpoint', 'now')}. A resumed "
                "run must be the run that was started; start a new one in another run.out"
            )

    # ------------------------------------------------------------------ one step
    def _micro_batches(self, x: torch.Tensor, y: torch.Tensor):
        m = self.plan.micro
        return [(x[i : i + m], y[i : i + m]) for i in range(0, x.shape[0], m)]

    def train_step(self, x: torch.Tensor, y: torch.Tensor, totals: torch.Tensor) -> None:
        """Forward/backward over the micro-batches of this rank's slice, then one update."""
        parts = self._micro_batches(x, y)
        for i, (xb, yb) in enumerate(parts):
            last = i == len(parts) - 1
            sync = contextlib.nullcontext()
            if self.ctx.distributed and not last:
                sync = self.net.no_sync()  # all-reduce once, on the last micro-batch
            amp = (
                torch.autocast(self.ctx.device.type, dtype=self.autocast)
                if self.autocast is not None
                else contextlib.nullcontext()
            )
            with sync, amp:
                out = self.net(xb)
                loss = nn.functional.cross_entropy(out, yb)
            with torch.no_grad():  # [Σ loss·n, Σ correct, n], kept on the device
                n = yb.shape[0]
                totals[0] += loss.detach().float() * n
                totals[1] += (out.argmax(1) == yb).sum()
                totals[2] += n
            del out  # the graph keeps what backward needs; the logits can go
            if i == 0:
                # Clearing the gradients here, just before they are written again, rather than
                # right after the update, lets backward reuse their memory at once: about 10%
                # faster per step on the CPU (benchmarks/bench_engine.py).
                self.optimizer.zero_grad(set_to_none=True)
            (loss if len(parts) == 1 else loss / len(parts)).backward()
        if self.tracker.due(self.step + 1):
            self.metrics.log(self.tracker.record(self.step + 1))
        if self.controller is not None:
            self.controller.step()
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Top-1 accuracy and mean loss on the eval split (sharded over ranks, then summed)."""
        average_buffers(self.model, self.ctx)
        was = self.model.training
        self.model.eval()
        totals = torch.zeros(3, device=self.ctx.device, dtype=torch.float64)
        for x, y in self.eval_loader:
            amp = (
                torch.autocast(self.ctx.device.type, dtype=self.autocast)
                if self.autocast is not None
                else contextlib.nullcontext()
            )
            with amp:
                out = self.model(x)
            totals[0] += nn.functional.cross_entropy(out.float(), y, reduction="sum")
            totals[1] += (out.argmax(1) == y).sum()
            totals[2] += y.shape[0]
        self.model.train(was)
        all_reduce_sum(totals, self.ctx)
        loss, correct, count = totals.tolist()
        return {"accuracy": correct / count, "loss": loss / count}

    def _measure(self, epoch: int) -> None:
        """The full measures of the measurement suite on a fixed subset (rank 0 only)."""
        self._measured.add(epoch)
        if self.ctx.is_main:
            from biasdecay.sharpness.suite import MeasureOptions, run_measures

            if self._measure_data is None:  # drawn once: every measure sees the same images
                self._measure_data = C.measure_batches(
                    self.cfg, *self._splits, self.plan, self.ctx.device
                )
            batches = self._measure_data
            run = self.cfg.run
            options = MeasureOptions(
                hessian_matvecs=run.measure_matvecs,
                lanczos_iters=run.measure_lanczos_iters,
                seed=run.seed,
            )
            results = run_measures(self.model, batches, run.measures, options)
            self.metrics.log(
                {
                    "kind": "measures",
                    "step": self.step,
                    "epoch": epoch,
                    "split": run.measure_split,
                    "samples": sum(x.shape[0] for x, _ in batches),
                    **results,
                }
            )
        barrier(self.ctx)

    # ------------------------------------------------------------------ the run
    def fit(self, *, resume: bool = False) -> dict[str, Any]:
        """Train to the end (or to ``run.max_steps`` more steps); returns the summary.

        Rank 0 holds the run directory's lock throughout, so a second trainer of the same
        directory is refused (:class:`~biasdecay.train.process.RunDirectoryBusy`).
        """
        lock = RunLock(self.run_dir) if self.ctx.is_main else contextlib.nullcontext()
        try:
            with lock:
                return self._fit(resume)
        except StorageError:
            raise
        except OSError as exc:  # a full disk, a vanished or read-only directory
            raise StorageError(self._storage_message(exc)) from exc
        finally:  # however the run ends, its files are closed (and its disk can be unmounted)
            if getattr(self, "metrics", None) is not None:
                self.metrics.close()

    def _storage_message(self, exc: OSError) -> str:
        cause = exc.strerror or str(exc)
        where = f"{exc.filename}: " if exc.filename else ""
        kept = list_checkpoints(self.run_dir) if self.run_dir.is_dir() else []
        if kept:
            state = (
                f"the last checkpoint, {kept[-1].name}, is kept. Fix the cause (e.g. free disk "
                f"space), then continue from it: `biasdecay train --resume {self.run_dir}`"
            )
        else:
            state = (
                "no checkpoint was kept. Fix the cause (e.g. free disk space), then start the "
                "run again with the same command"
            )
        return f"run {self.run_dir} could not write its files ({where}{cause}); {state}"

    def _fit(self, resume: bool) -> dict[str, Any]:
        cfg, main = self.cfg, self.ctx.is_main
        if not resume:
            self._refuse_to_overwrite()
        epoch, skip = self.restore() if resume else (0, 0)
        if resume and self.step >= self.total_steps:
            done = self._finished_summary()
            if done is not None:  # nothing to do: leave the run exactly as it is
                self.log(f"resume: {self.run_dir} already finished ({self.step} steps)")
                return done
        self.metrics = MetricsWriter(self.run_dir, enabled=main, tensorboard=cfg.run.tensorboard)
        # A resume drops the records past its step (they are about to be made again), and at
        # the last step also that step's final evaluation and measures, which are redone; a
        # fresh start drops every record an earlier attempt left.
        self.metrics.truncate_after(
            self.step if resume else -1,
            redo=("eval", "measures") if resume and self.step >= self.total_steps else (),
        )
        if not resume and main:
            groups_summary = format_group_summary(
                self.model, self.policy, cfg.optimizer.weight_decay, C.layer_adaptation(cfg)
            )
            self.log(groups_summary)
            write_run_info(
                self.run_dir,
                config_toml=dump_toml(cfg),
                environment={
                    **environment_info(self.ctx.device, self.ctx.world_size),
                    "batch_plan": vars(self.plan),
                    "synthetic_data": self.synthetic,
                },
                groups_summary=groups_summary,
            )
        self.log(
            f"train: {self.spec.describe()}; {cfg.optimizer.name} under {self.policy.describe()}; "
            f"batch {self.plan.logical} = {self.ctx.world_size} rank(s) x "
            f"{self.plan.accumulation} x {self.plan.micro}; {self.total_steps} steps "
            f"({self.steps_per_epoch} per epoch) on {self.ctx.device}"
        )
        summary: dict[str, Any] = {"status": "running"}
        start, stop_at = time.perf_counter(), self.total_steps
        if cfg.run.max_steps is not None:
            stop_at = min(stop_at, self.step + cfg.run.max_steps)
        if self.step == 0 and 0 in cfg.run.measure_epochs:
            self._measure(0)  # the network at initialisation, where the paper's curves start
        progress = Progress(
            self.total_steps, enabled=main, initial=self.step, log=self.log, tty=self.show_progress
        )
        self.net.train()
        totals = torch.zeros(3, device=self.ctx.device, dtype=torch.float64)
        outer_log = self.log
        if main:  # messages go above the progress bar instead of through it
            self.log = progress.write
        try:
            while self.step < stop_at:
                self.train_loader.set_epoch(epoch)
                for batch, (x, y) in enumerate(self.train_loader):
                    if batch < skip:  # resuming mid-epoch: same order, same augmentation draws
                        continue
                    self.train_step(x, y, totals)
                    progress.update(1)
                    if self.step % cfg.run.log_every == 0 or self.step == stop_at:
                        self._log_train(epoch, totals)
                    if cfg.run.checkpoint_every and self.step % cfg.run.checkpoint_every == 0:
                        self.save(epoch, batch + 1)
                    if self.on_step is not None:
                        self.on_step(self, self.step)
                    if self.step >= stop_at:
                        break
                else:  # the epoch ran to its end
                    skip, epoch = 0, epoch + 1
                    self._end_of_epoch(epoch)
                    continue
                break
            self._check_finite()
            if self.step < self.total_steps:  # stopped early (max_steps): resumable from here
                self.save(epoch, batch + 1)
            else:
                final = self.evaluate()
                self.metrics.log({"kind": "eval", "step": self.step, "epoch": epoch, **final})
                self.save(epoch, 0)
                summary.update(status="finished", test_accuracy=final["accuracy"])
                summary["test_loss"] = final["loss"]
                if main:  # the trained network alone, for `biasdecay measure --checkpoint`
                    save_model(self.run_dir / "model.pt", self.model, self.spec, meta=final)
                last_epoch = math.ceil(self.step / self.steps_per_epoch)
                if last_epoch in cfg.run.measure_epochs and last_epoch not in self._measured:
                    self._measure(last_epoch)  # the loop ends before the last epoch's hook
        except Diverged as exc:
            kept = list_checkpoints(self.run_dir)
            if kept:
                where = f"the last good checkpoint is {kept[-1].name} (every kept one is finite)"
            else:
                where = "no checkpoint was saved before it, so there is nothing to resume from"
            self.log(f"train: DIVERGED at step {self.step}: {exc}; {where}")
            summary.update(status="diverged", diverged_at=self.step, reason=str(exc))
            self.metrics.log({"kind": "event", "step": self.step, "event": "diverged"})
        finally:
            progress.close()
            self.log = outer_log
        summary.update(
            steps=self.step,
            total_steps=self.total_steps,
            epochs=self.step / self.steps_per_epoch,
            seconds=time.perf_counter() - start,
            synthetic_data=self.synthetic,
        )
        if main:
            write_summary(self.run_dir, summary)
        self.metrics.close()
        return summary

    def _refuse_to_overwrite(self) -> None:
        """A fresh start never replaces a run's checkpoints or a run that ended."""
        if list_checkpoints(self.run_dir):
            raise ConfigError(
                f"run directory {self.run_dir} already holds checkpoints of a run: continue it "
                f"with --resume {self.run_dir}, or choose another run.out (--out)"
            )
        ended = ["model.pt"] if (self.run_dir / "model.pt").is_file() else []
        status = _summary_status(self.run_dir)
        if status in ("finished", "diverged"):
            ended.insert(0, f"summary.json says {status}")
        if ended:
            raise ConfigError(
                f"run directory {self.run_dir} holds a run that ended ({' and '.join(ended)}), "
                "and a run that ended is never overwritten: choose another run.out (--out), or "
                f"delete {self.run_dir} to train it again"
            )

    def _finished_summary(self) -> dict[str, Any] | None:
        """The run's final summary when it finished and its model was saved, else None."""
        try:
            summary = json.loads((self.run_dir / "summary.json").read_text())
        except (OSError, ValueError):
            return None
        if summary.get("status") == "finished" and (self.run_dir / "model.pt").is_file():
            return summary
        return None

    def _end_of_epoch(self, epoch: int) -> None:
        cfg = self.cfg
        self._check_finite()  # evaluating or measuring NaN weights would print numbers for them
        if cfg.run.eval_every and epoch % cfg.run.eval_every == 0 and self.step < self.total_steps:
            result = self.evaluate()
            self.metrics.log({"kind": "eval", "step": self.step, "epoch": epoch, **result})
            self.log(f"epoch {epoch}: test accuracy {result['accuracy']:.2%}")
        if epoch in cfg.run.measure_epochs and epoch not in self._measured:
            self._measure(epoch)
        if not cfg.run.checkpoint_every and self.step < self.total_steps:
            self.save(epoch, 0)

    def _log_train(self, epoch: int, totals: torch.Tensor) -> None:
        loss_sum, correct, count = all_reduce_sum(totals.clone(), self.ctx).tolist()
        totals.zero_()
        loss = loss_sum / count if count else math.nan
        if not math.isfinite(loss) or loss > self.cfg.run.divergence_loss:
            raise Diverged(f"training loss {loss:.4g}")
        self.metrics.log(
            {
                "kind": "train",
                "step": self.step,
                "epoch": epoch,
                "loss": loss,
                "accuracy": correct / count,
                "lr": self.scheduler.get_last_lr()[0],
            }
        )

    def _check_finite(self) -> None:
        """Refuse to checkpoint non-finite parameters: the last good checkpoint stays.

        Checked once per step at most: an epoch end that evaluates and then saves, or the final
        evaluation and save, share one check (and one host sync).
        """
        if self.step == self._finite_step:
            return
        finite = torch.stack([p.detach().isfinite().all() for p in self.model.parameters()])
        ok = finite.all().to(torch.float64).reshape(1)
        all_reduce_sum(ok, self.ctx)
        if ok.item() < self.ctx.world_size:
            raise Diverged("non-finite parameters")
        self._finite_step = self.step
