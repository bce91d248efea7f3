"""`fastlm-train` (and its alias `fastlm train`): pretrain a causal or masked LM from a config, flags and ``--set``.

With no arguments it runs the README's main job: a tiny causal LM on the built-in corpora, on the GPU when
there is one, else the CPU. The settings are `fastlm.train.config.TrainConfig`; this
file only turns argv into one and prints where the outputs go. Neither torch nor ``fastlm.train`` is
imported until a run (or ``--help``) needs them, so ``fastlm data ...`` stays light.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import re
import sys
import textwrap
import typing
from typing import Any, Optional

DESCRIPTION = """\
Pretrain a language model: prepare the data (clean, train a tokenizer, encode; cached under
<out>/cache), train, evaluate, sample and checkpoint. Settings come from the defaults, then --config,
then --set, then the flags below. Outputs go to <out>/<run-name>/ (config.yaml, metrics.jsonl,
loss.png, checkpoints/step-NNNNNNNN/).
"""

EXAMPLES = """\
examples:
  fastlm-train                                   # the main job: tiny CLM on the built-in corpora
  fastlm-train --config configs/clm-small.yaml --set max_steps=2000 optim.lr=1e-3
  fastlm-train --task mlm --set data.text='[corpus/*.jsonl]'
  fastlm-train --task sft --set post.data='[chats.jsonl]'   # from the newest clm run in ./runs
  fastlm-train --resume runs/clm-tiny-20261127-101500        # continue the run's latest checkpoint
  torchrun --standalone --nproc_per_node 2 -m fastlm.cli.train --config cfg.yaml   # DDP/FSDP
"""


class _HelpAction(argparse.Action):
    """-h/--help: the options, then the config keys (built only now: it imports the config module)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.epilog = EXAMPLES + "\n" + task_defaults_help() + "\n" + config_help()
        parser.print_help()
        parser.exit()


def task_defaults_help() -> str:
    """The defaults each post-training task changes (fastlm.train.config.TASK_DEFAULTS)."""
    from fastlm.train.config import TASK_DEFAULTS

    def flat(d: dict, prefix: str = "") -> list[str]:
        out = []
        for k, v in d.items():
            out += flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}={v}"]
        return out
    lines = ["task defaults (under --config and --set):"]
    for task, d in TASK_DEFAULTS.items():
        lines.append(textwrap.fill(" ".join(flat(d)), width=100, initial_indent=f"  {task:<7} ",
                                   subsequent_indent=" " * 10))
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `fastlm-train` (shared by the `fastlm train` alias)."""
    p.add_argument("-h", "--help", action=_HelpAction, help="show this help (options and config keys) and exit")
    p.add_argument("--task", choices=("clm", "mlm", "sft", "reward", "dpo", "ppo", "grpo", "rloo"),
                   help="clm: causal LM (GPT); mlm: masked LM (encoder); post-training (from post.init_from): "
                   "sft, reward, dpo, ppo, grpo, rloo. Default: the config's task, else clm")
    p.add_argument("--train-on-prompt", action="store_true", default=None,
                   help="sft: supervise prompt tokens too (post.train_on_prompt; default: assistant tokens only)")
    p.add_argument("--config", metavar="FILE", help="YAML or TOML file of config keys (see below; unknown keys "
                   "and wrong types are refused)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config keys, e.g. --set max_steps=100 optim.lr=1e-3 model.overrides.n_layer=2 "
                   "(values read as YAML; of a key given twice, the last wins)")
    p.add_argument("--resume", metavar="RUN_OR_CKPT", help="continue from a run directory (its latest complete "
                   "checkpoint) or a checkpoint directory, with the config stored there (--config/--set/flags on top, "
                   "e.g. --set max_steps=600)")
    p.add_argument("--out", metavar="DIR", help="parent directory of runs and of the data cache (config key "
                   "out, default ./runs)")
    p.add_argument("--run-name", metavar="NAME", help="run directory name under --out (default "
                   "<task>-<size>-<YYYYmmdd-HHMMSS>)")
    p.add_argument("--device", metavar="D", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    p.add_argument("--quiet", action="store_true", help="no progress output or notes; print only the final summary")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")


def build_parser(prog: str = "fastlm-train") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, add_help=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def register(groups: argparse._SubParsersAction) -> None:
    """`fastlm train ...`: the same command as `fastlm-train`."""
    p = groups.add_parser("train", help="pretrain a causal or masked LM, or post-train it: sft, reward, dpo, ppo, "
                          "grpo, rloo (same as fastlm-train)", add_help=False,
                          description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=lambda args: run_args(args, prog="fastlm train"))


# ---- the config listing of --help ---------------------------------------------------------------------

_FIELD = re.compile(r"^\s+(\w+)\s*:[^#]*?(?:#\s*(.*))?$")
_MORE = re.compile(r"^\s+#\s*(.*)$")  # a comment line under a field's: its comment goes on


def _comments(cls) -> dict[str, str]:
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # no source shipped: the listing goes without comments
        return {}
    out: dict[str, str] = {}
    last = None  # the field whose comment a comment-only line continues
    for line in source.splitlines():
        m = _FIELD.match(line)
        more = _MORE.match(line)
        if m:
            last = m.group(1) if m.group(2) else None
            if last:
                out[last] = m.group(2).strip()
        elif more and last:
            out[last] += " " + more.group(1).strip()
        else:
            last = None
    return out


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value if value else '""'
    return json.dumps(value).replace('"', "")


def config_help() -> str:
    """The config keys with their defaults and comments, one per line, from the TrainConfig dataclasses.

    >>> "optim.lr = 0.003" in config_help()
    True
    """
    from fastlm.train.config import TrainConfig

    lines = ["config keys (--set KEY=VALUE, or nested by section in a --config file), with defaults:"]

    def walk(cls, prefix: str) -> None:
        comments, hints = _comments(cls), typing.get_type_hints(cls)
        defaults = cls()
        nested = []
        for f in dataclasses.fields(cls):
            value = getattr(defaults, f.name)
            if dataclasses.is_dataclass(value):
                nested.append((f.name, type(value)))
                continue
            note = comments.get(f.name, "")
            if typing.get_origin(hints[f.name]) is typing.Literal and "|" not in note:
                choices = "|".join(map(str, typing.get_args(hints[f.name])))
                note = f"{choices}{'; ' + note if note else ''}"
            lines.append(f"  {prefix + f.name + ' = ' + _show(value):<42} {note}".rstrip())
        for name, sub in nested:
            doc = (inspect.getdoc(sub) or "").split("\n\n")[0].replace("\n", " ").replace("``", "")
            lines.append(textwrap.fill(f"[{prefix}{name}] {doc}", 100, initial_indent="  ", subsequent_indent="    "))
            walk(sub, f"{prefix}{name}.")

    walk(TrainConfig, "")
    return "\n".join(lines) + "\n"


# ---- running ------------------------------------------------------------------------------------------

def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _resumed_config(path: str) -> dict[str, Any]:
    """The train config stored in the latest complete checkpoint of a run (or in a checkpoint)."""
    from fastlm.train.checkpoint import CheckpointError, latest_checkpoint

    ckpt = latest_checkpoint(path, strict=True)
    if ckpt is None:
        raise CheckpointError(f"--resume {path}: no complete checkpoint there")
    state_path = os.path.join(ckpt, "state.json")
    try:
        with open(state_path, encoding="utf-8") as f:
            return dict(json.load(f)["train_config"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{state_path}: no readable train_config ({e})") from None


def resolve_config(args: argparse.Namespace):
    """The TrainConfig of parsed arguments: defaults (or, with --resume, the checkpoint's config) < --config
    < --set < flags."""
    from fastlm.config import ConfigError, from_dict
    from fastlm.train.config import TrainConfig, load_train_config

    flags = {"task": args.task, "out": args.out, "run_name": args.run_name, "device": args.device,
             "post.train_on_prompt": getattr(args, "train_on_prompt", None)}
    overrides = list(args.overrides) + [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]
    if args.resume == "":  # `--resume $RUN` with RUN unset: not a fresh run
        raise ConfigError("--resume: the run or checkpoint path is empty")
    base = _resumed_config(args.resume) if args.resume is not None else None
    try:
        return load_train_config(args.config, overrides, base=base)
    except ConfigError:
        if base is not None:  # the fault may be the checkpoint's own config (an edited state.json): say so
            try:
                from_dict(TrainConfig, base, where="train_config")
            except ConfigError as e:
                raise ConfigError(f"--resume {args.resume}: the checkpoint's {e}") from None
        raise


def _summary(result: Any) -> list[str]:
    lines = []
    sample = "".join(c if c in "\n\t" or c.isprintable() else repr(c)[1:-1]  # no raw control characters
                     for c in getattr(result, "sample", "") or "")
    if sample:
        lines += ["sample:", "  " + sample.strip().replace("\n", "\n  ")]
    val = getattr(result, "val", None) or {}
    if val:
        shown = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in val.items())
        lines.append(f"val (step {getattr(result, 'step', '?')}): {shown}")
    if getattr(result, "checkpoint", None):
        lines.append(f"checkpoint: {result.checkpoint}")
    lines.append(f"outputs in {result.run_dir}")
    return lines


def run_args(args: argparse.Namespace, *, prog: str = "fastlm-train") -> int:
    """Run parsed `fastlm-train` arguments; a config or input error is one line on stderr, exit status 2."""
    main = _is_main_process()
    try:
        cfg = resolve_config(args)
        if main and not args.quiet:
            from fastlm.train.config import config_notes
            for note in config_notes(cfg):
                print(f"{prog}: note: {note}", file=sys.stderr)
        if args.print_config:
            import yaml

            if main:
                sys.stdout.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            return 0
        from fastlm.train import trainer

        # the trainer says where the outputs go as it starts (it names the run, one name for all ranks)
        result = trainer.run(cfg, resume=args.resume, console=not args.quiet)
    except BrokenPipeError:  # `fastlm-train | head`: the reader left; stop quietly
        from fastlm.cli.main import _silence_stdout
        _silence_stdout()
        return 141
    except (ValueError, OSError) as e:  # ConfigError, missing inputs, refused checkpoints: the message says it all
        if os.environ.get("FASTLM_TRACEBACK"):
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # the run itself failed (e.g. stopped after repeated loss spikes, out of memory)
        if os.environ.get("FASTLM_TRACEBACK"):
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (continue with --resume and the run directory)", file=sys.stderr)
        return 130
    if main:
        print("\n".join(_summary(result)), flush=True)
    if getattr(result, "stopped", None) == "sigterm":  # a checkpoint, not a finished run: 128 + SIGTERM
        if main:
            print(f"{prog}: stopped by SIGTERM at step {result.step} (continue with --resume {result.run_dir})",
                  file=sys.stderr)
        return 143
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of the `fastlm-train` console script."""
    args = build_parser().parse_args(argv)
    return run_args(args)


if __name__ == "__main__":
    sys.exit(main())
