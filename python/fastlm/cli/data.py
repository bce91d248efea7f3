"""`fastlm data ...`: the data-stage commands. Each command lives in its own module and
registers itself here: clean, dedup, convert, stats, train-classifier, classify."""

from __future__ import annotations

import argparse
import importlib

# (module under fastlm.cli, ...): each defines register(subparsers) adding one command.
COMMAND_MODULES = ("data_clean", "data_dedup", "data_convert", "data_stats", "data_classifier")


def register(groups: argparse._SubParsersAction) -> None:
    parser = groups.add_parser("data", help="clean, filter, deduplicate and convert text data")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"fastlm.cli.{name}").register(commands)
