"""`fastlm export --ckpt DIR --to hf OUT`: a checkpoint as a Hugging Face transformers directory."""

from __future__ import annotations

import argparse
import os
import sys

from fastlm.cli.checks import check_output


def register(groups: argparse._SubParsersAction) -> None:
    p = groups.add_parser(
        "export", help="export a checkpoint (model + tokenizer) to another format",
        description="Write a checkpoint as a Hugging Face transformers directory: config.json, "
                    "model.safetensors, tokenizer files (and generation_config.json for causal LMs). "
                    "Causal LMs become LlamaForCausalLM (SwiGLU) or ArceeForCausalLM (GELU MLP); "
                    "masked LMs MegatronBertForMaskedLM (learned positions) or ModernBertForMaskedLM (rotary). "
                    "Load with transformers' "
                    "AutoModelForCausalLM / AutoModelForMaskedLM and AutoTokenizer.from_pretrained(OUT).")
    p.add_argument("out", metavar="OUT", help="output directory (created; must be empty or absent unless --force)")
    p.add_argument("--ckpt", required=True, help="checkpoint directory, or a run directory (its latest checkpoint)")
    p.add_argument("--to", default="hf", choices=("hf",), help="target format (default: hf)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="weight dtype in model.safetensors (default: float32, the trained weights)")
    p.add_argument("--force", action="store_true", help="replace a non-empty OUT")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from fastlm.models.export import export_hf, hf_architecture
    from fastlm.train.checkpoint import load_model

    if not os.path.exists(args.ckpt):
        raise ValueError(f"--ckpt {args.ckpt}: no such checkpoint or run directory")
    check_output(args.out, "OUT", folder=True)
    _refuse_early(args)
    model, tokenizer, meta = load_model(args.ckpt, device="cpu")
    arch = hf_architecture(model.config)
    export_hf(model, tokenizer, args.out, dtype=args.dtype, force=args.force)
    step = meta.get("step", "?") if isinstance(meta, dict) else "?"
    print(f"exported {args.ckpt} (step {step}) as {arch} to {args.out}", file=sys.stderr)
    return 0


def _refuse_early(args: argparse.Namespace) -> None:
    """Refuse, before loading any weights or touching OUT: an OUT that is or holds the checkpoint (or the
    --ckpt directory), which writing the export would replace; a model that cannot be exported from its
    state.json alone: a reward model (its scalar ``score`` head has no transformers equivalent here) or an
    encoder without an exact equivalent. A checkpoint that is not readable is left to `load_model`."""
    from fastlm.data.io import path_within
    from fastlm.models import RewardConfig, config_from_dict
    from fastlm.models.export import ExportError, hf_architecture
    from fastlm.train.checkpoint import _read_state, _resolve

    ckpt = _resolve(args.ckpt)
    out = os.path.realpath(args.out)
    for path in (ckpt, args.ckpt):  # OUT is replaced as a whole (--force): never by an export of itself
        if path_within(os.path.realpath(path), out):
            raise ExportError(f"OUT {args.out} holds the checkpoint {ckpt} (--ckpt {args.ckpt}): exporting there "
                              "would replace the checkpoint; choose another output directory")
    try:
        config = config_from_dict(_read_state(ckpt)["model_config"])
    except (KeyError, TypeError, ValueError):
        return  # load_model names what is wrong with the checkpoint
    if isinstance(config, RewardConfig):
        raise ExportError(f"--ckpt {args.ckpt}: {ckpt} is a reward model (task=reward); reward models cannot be "
                          f"exported to the Hugging Face format (--to {args.to}): only causal LMs and masked LMs "
                          "can; export the SFT checkpoint it was trained from instead")
    try:
        hf_architecture(config)
    except ExportError as e:
        raise ExportError(f"--ckpt {args.ckpt}: {e}") from None
