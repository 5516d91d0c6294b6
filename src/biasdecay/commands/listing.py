"""``biasdecay list``: the names every option accepts."""

from __future__ import annotations

import argparse

from biasdecay.data import DATASETS
from biasdecay.nn.models import model_names
from biasdecay.sharpness.suite import measure_names
from biasdecay.study.presets import preset_names
from biasdecay.study.specs import study_names


def run(args: argparse.Namespace) -> int:
    what = args.what
    if what in ("models", "all"):
        print("models:   " + ", ".join(model_names()))
    if what in ("data", "all"):
        print("data:     " + ", ".join(DATASETS))
    if what in ("measures", "all"):
        print("measures: " + ", ".join(measure_names()))
    if what in ("studies", "all"):
        print("studies:  " + ", ".join(study_names()))
    if what in ("presets", "all"):
        print("presets:  " + ", ".join(preset_names()))
    return 0
