"""`fastlm` entry point: dispatches to subcommand groups (`fastlm data ...`)."""

from __future__ import annotations

import argparse
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastlm", description="Train a language model from scratch.")
    groups = parser.add_subparsers(dest="group", metavar="COMMAND")
    groups.required = True

    from fastlm.cli import data as data_cli

    data_cli.register(groups)
    from fastlm.cli import tokenizer as tokenizer_cli

    tokenizer_cli.register(groups)
    from fastlm.cli import train as train_cli

    train_cli.register(groups)
    from fastlm.cli import export as export_cli

    export_cli.register(groups)
    from fastlm.cli import evaluate as eval_cli, generate as generate_cli

    generate_cli.register(groups)
    eval_cli.register(groups)
    return parser


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush of a broken pipe stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (captured output)
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `fastlm ... | head`: the reader left; stop quietly, as cat does
        _silence_stdout()
        return 141
    except (ValueError, OSError) as e:  # DataError and clear user errors: message, no traceback
        print(f"fastlm: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
