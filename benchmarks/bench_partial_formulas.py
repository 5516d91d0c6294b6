"""Per-sample C on models where some parameters have no layer formula: two ways, side by side.

Hugging Face vision models hold parameters that no layer formula covers: ViT's class token and
position table (held by its embeddings module itself), ConvNeXt's channels-first LayerNorm and
layer-scale vectors, Swin's relative-position tables. ``method="auto"`` measures every other
parameter through the layer formulas, the class token and position table there too (handed to
the model expanded over the batch), and the rest through ``torch.func`` (report method
"hooks+vmap"); ``method="vmap"`` takes every parameter through ``torch.func``. Both are exact;
they differ in time and memory. Rows, timed in interleaved rounds in one process:

* forward+backward of the batch (the unit);
* per-sample C, ``method="auto"`` (formulas, and torch.func for the parameters without one);
* per-sample C, ``method="vmap"`` (torch.func for every parameter, chunks of 32 samples).

Each row gets the median over rounds of its time over the unit's in the same round, and the
peak resident memory of one call above the model and batch, in a fresh process per row (Linux).
Before the timings, each model's C from both paths is printed.

    python benchmarks/bench_partial_formulas.py                 # every model
    python benchmarks/bench_partial_formulas.py --models vit-s --rounds 3
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import statistics
import subprocess
import sys
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from _common import cpu_name, interleaved_times, peak_bytes
from biasdecay.sharpness.connectivity import connectivity_sharpness


class Logits(nn.Module):
    """A Hugging Face image classifier as a module that returns its logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).logits


# name: (Hugging Face family, its config's settings, a description); 32x32 images, 10 classes
VIT = dict(image_size=32, patch_size=4, num_channels=3, num_labels=10)
SWIN = dict(image_size=32, patch_size=2, num_channels=3, window_size=4, num_labels=10)
MODELS = {
    "vit-s": (
        "ViT",
        dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=6,
             intermediate_size=1536, **VIT),
        "ViT, dim 384, 6 blocks, 65 tokens",
    ),
    "convnext-t": (
        "ConvNext",
        dict(num_channels=3, hidden_sizes=[96, 192, 384], depths=[2, 2, 4], num_stages=3,
             num_labels=10),
        "ConvNeXt, widths 96-192-384, depths 2-2-4",
    ),
    "swin-t": (
        "Swin",
        dict(embed_dim=96, depths=[2, 2, 6], num_heads=[3, 6, 12], **SWIN),
        "Swin, dim 96-384, windows of 4x4",
    ),
    "vit-tiny": (
        "ViT",
        dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=512, **VIT),
        "ViT, dim 128, 2 blocks, 65 tokens",
    ),
    "swin": (
        "Swin",
        dict(embed_dim=32, depths=[2, 2], num_heads=[2, 4], **SWIN),
        "Swin, dim 32-64, windows of 4x4",
    ),
}  # fmt: skip


def build(name: str) -> tuple[nn.Module, str]:
    """The model (eval mode, float32) and a one-line description."""
    import transformers as tf

    if name not in MODELS:
        raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    family, settings, what = MODELS[name]
    torch.manual_seed(0)
    config = getattr(tf, f"{family}Config")(**settings)
    model = Logits(getattr(tf, f"{family}ForImageClassification")(config)).eval()
    n_params = sum(p.numel() for p in model.parameters())
    return model, f"{what} ({n_params:,} params), 32x32 images"


def rows_for(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, object]:
    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    return {
        "forward+backward (unit)": forward_backward,
        "C per-sample, auto (formulas + torch.func)": lambda: connectivity_sharpness(
            model, [(x, y)]
        ),
        "C per-sample, vmap (torch.func throughout)": lambda: connectivity_sharpness(
            model, [(x, y)], method="vmap", chunk_size=32
        ),
    }


def batch(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(size, 3, 32, 32, generator=g), torch.randint(0, 10, (size,), generator=g)


def memory_child(model_name: str, row: str, size: int) -> None:
    """In a fresh process: one untimed call, then the peak memory of a second (bytes), with
    what the first freed handed back to the system first."""
    model, _ = build(model_name)
    x, y = batch(size)
    fn = rows_for(model, x, y)[row]
    fn()
    # What the first call freed stays resident unless it is handed back (glibc).
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    print(json.dumps({"peak_bytes": peak_bytes(fn, torch.device("cpu"))}))


def peak_mib(model_name: str, row: str, size: int) -> float:
    cmd = [sys.executable, __file__, "--batch", str(size), "--memory-row", model_name, row]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"] / 2**20


def bench(name: str, rounds: int, memory: bool, size: int) -> None:
    model, what = build(name)
    x, y = batch(size)
    auto = connectivity_sharpness(model, [(x, y)])
    vmap = connectivity_sharpness(model, [(x, y)], method="vmap", chunk_size=32)
    elsewhere = sorted(n for n, path in auto.paths.items() if path != "hooks")
    print(f"\n## {name}: {what} | batch {size} | eval")
    print(f"auto: method {auto.method}, C = {auto.total:.6f}; vmap: C = {vmap.total:.6f}")
    print(f"  {len(elsewhere)} of {len(auto.paths)} parameters through torch.func under auto")
    rows = rows_for(model, x, y)
    times = interleaved_times(list(rows.items()), rounds, torch.device("cpu"), settle=1)
    unit = times["forward+backward (unit)"]
    print(f"{'method':<46}{'best s':>9}{'median x':>10}" + (f"{'peak MiB':>10}" if memory else ""))
    for row, t in times.items():
        ratio = statistics.median(a / b for a, b in zip(t, unit, strict=True))
        line = f"{row:<46}{min(t):>9.4f}{ratio:>10.2f}"
        if memory:
            line += f"{peak_mib(name, row, size):>10.1f}"
        print(line)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated models")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--batch", type=int, default=64, help="samples per batch")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory column")
    parser.add_argument("--memory-row", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # torch.func's notes on attention's batching rules
    if args.memory_row:
        memory_child(*args.memory_row, args.batch)
        return
    print(f"$ python benchmarks/bench_partial_formulas.py {' '.join(sys.argv[1:])}".rstrip())
    print(
        f"torch {torch.__version__} | {cpu_name()} | threads {torch.get_num_threads()} | cpu | "
        f"float32 | {args.rounds} interleaved rounds, 1 untimed call before each"
    )
    for name in args.models.split(","):
        bench(name, args.rounds, not args.no_memory, args.batch)


if __name__ == "__main__":
    main()
