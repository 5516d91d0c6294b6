"""``biasdecay list``: the names every option accepts, and every setting a config can hold."""

from __future__ import annotations

import argparse

from biasdecay.data import dataset_names
from biasdecay.decay import policy_names
from biasdecay.nn.models import model_names
from biasdecay.optim import optimizer_names
from biasdecay.schedules import SCHEDULES
from biasdecay.sharpness.suite import measure_names
from biasdecay.study.presets import preset_names
from biasdecay.study.specs import study_names
from biasdecay.train.config_help import format_setting_help

# What `biasdecay list WHAT` prints, each with the function that names its valid values.
LISTS = {
    "models": model_names,
    "data": dataset_names,
    "optimizers": optimizer_names,
    "policies": policy_names,
    "schedules": SCHEDULES.names,
    "measures": measure_names,
    "studies": study_names,
    "presets": preset_names,
}

EPILOG = """\
examples:
  biasdecay list                      every kind of name, one kind a line
  biasdecay list settings             every config setting: default, type, range, help
  biasdecay list settings optimizer   the [optimizer] section's settings
  biasdecay list settings run.epochs  one setting
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``list`` to ``subparsers`` (see :mod:`biasdecay.commands`); returns its parser."""
    p = subparsers.add_parser(
        "list",
        help="valid names (models, data, optimizers, ...) and every config setting",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("what", nargs="?", default="all", choices=["all", *LISTS, "settings"])
    p.add_argument(
        "name",
        nargs="?",
        default="",
        help="with 'settings': a section (optimizer) or one setting (optimizer.momentum)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    """Print the valid names of ``args.what`` (every kind for ``all``), or the settings' help.

    Raises:
        ConfigError: ``list settings NAME`` with an unknown section or key.
    """
    if args.what == "settings":
        print(format_setting_help(args.name))  # the config's own defaults, ranges and help
        return 0
    for what, names in LISTS.items():
        if args.what in (what, "all"):
            print(f"{what + ':':<12}" + ", ".join(names()))
    if args.what == "all":
        print("settings:   biasdecay list settings (every config key, its default, range and help)")
    return 0
