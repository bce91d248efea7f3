"""`fastlm export --ckpt DIR --to hf OUT`: a checkpoint as a Hugging Face transformers directory."""

from __future__ import annotations

import argparse
import os
import sys


def register(groups: argparse._SubParsersAction) -> None:
    p = groups.add_parser(
        "export", help="export a checkpoint (model + tokenizer) to another format",
        description="Write a checkpoint as a Hugging Face transformers directory: config.json, "
                    "model.safetensors, tokenizer files (and generation_config.json for causal LMs). "
                    "Causal LMs become LlamaForCausalLM (SwiGLU) or ArceeForCausalLM (GELU MLP); "
                    "masked LMs MegatronBertForMaskedLM. Load with transformers' "
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
    model, tokenizer, meta = load_model(args.ckpt, device="cpu")
    arch = hf_architecture(model.config)
    export_hf(model, tokenizer, args.out, dtype=args.dtype, force=args.force)
    step = meta.get("step", "?") if isinstance(meta, dict) else "?"
    print(f"exported {args.ckpt} (step {step}) as {arch} to {args.out}", file=sys.stderr)
    return 0
