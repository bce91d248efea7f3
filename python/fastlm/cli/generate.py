"""`fastlm generate --ckpt DIR --prompt TEXT`: sample text from a causal-LM checkpoint, streamed to
stdout as the tokens arrive (KV cache; temperature, top-k, top-p; seeded)."""

from __future__ import annotations

import argparse
import os
import sys
import time


def add_ckpt_args(p: argparse.ArgumentParser) -> None:
    """--ckpt and --device, shared by `generate` and `eval`."""
    p.add_argument("--ckpt", required=True, metavar="DIR",
                   help="a checkpoint directory, a run's checkpoints/ directory or a run directory "
                        "(the latest checkpoint in it is used)")
    p.add_argument("--device", default="auto",
                   help="auto (cuda when available, else cpu), cpu, cuda, cuda:1, ...")


def register(groups: argparse._SubParsersAction) -> None:
    p = groups.add_parser(
        "generate", help="sample text from a causal-LM checkpoint",
        description="Continue PROMPT with a causal LM checkpoint, printing the text as it is "
                    "generated. The prompt is encoded with the checkpoint's tokenizer after a "
                    "<|bos|> token (documents in training start with one). Generation stops after "
                    "--max-tokens or when the model ends the document (<|endoftext|>/<|eos|>, "
                    "else the next document's <|bos|>). An instruction-tuned checkpoint (sft, dpo, "
                    "ppo, grpo, rloo) answers PROMPT as a user turn instead (--chat / --no-chat).")
    add_ckpt_args(p)
    p.add_argument("--prompt", default="", help="text to continue (default: empty, a new document)")
    p.add_argument("--max-tokens", type=int, default=200, help="new tokens at most (default: 200)")
    p.add_argument("--temperature", type=float, default=0.8,
                   help="softmax temperature; 0 = greedy (default: 0.8)")
    p.add_argument("--top-k", type=int, default=200, help="sample among the k likeliest; 0 = off "
                                                          "(default: 200)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass; 1 = off "
                                                            "(default: 1.0)")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible samples")
    p.add_argument("--no-bos", action="store_true", help="do not put <|bos|> before the prompt")
    p.add_argument("--ignore-eos", action="store_true", help="never stop before --max-tokens")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="the prompt is a user turn in the chat template, the answer stops at "
                        "<|assistant_end|> (default: on for sft/dpo/ppo/grpo/rloo checkpoints, off for clm)")
    p.set_defaults(func=run_generate)


def pick_device(name: str):
    """'auto' -> cuda when available, else cpu; anything else as torch.device (checked)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"--device {name!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


def load_checkpoint_model(ckpt: str, device):
    """(model, tokenizer, meta, checkpoint dir) via fastlm.train.checkpoint.load_model; eval mode."""
    from fastlm.train.checkpoint import latest_checkpoint, load_model

    if not os.path.exists(ckpt):
        raise FileNotFoundError(f"--ckpt {ckpt}: no such file or directory")
    path = latest_checkpoint(ckpt, strict=True)
    if path is None:
        raise ValueError(f"--ckpt {ckpt}: no complete checkpoint there (a step-XXXXXXXX directory "
                         "with state.json, or a run directory holding checkpoints/)")
    model, tok, meta = load_model(path, device=str(device))
    if tok is None:
        raise ValueError(f"{path}: the checkpoint holds no tokenizer.fastlm (needed to encode "
                         "prompts and data)")
    model.eval()
    return model, tok, meta, path


def kernels_of(meta: dict) -> str:
    """The attention/loss kernels the run trained with ('fastlm' unless it said 'torch')."""
    k = ((meta.get("train_config") or {}).get("model") or {}).get("kernels", "fastlm")
    return k if k in ("fastlm", "torch") else "fastlm"


def autocast_for(device):
    """bf16 autocast on CUDA (as training ran), a no-op context on CPU."""
    import contextlib

    import torch

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


CHAT_TASKS = ("sft", "dpo", "ppo", "grpo", "rloo")  # checkpoints trained on the chat template


def _stop_id(tok):
    specials = tok.special_tokens
    for name in ("<|endoftext|>", "<|eos|>", "<|bos|>"):
        if name in specials:
            return specials[name]
    return None


def _check_utf8(prompt: str) -> None:
    """Refuse a prompt that is not Unicode text: bytes of the command line that are not UTF-8 (Python
    keeps them as U+DC80..U+DCFF) or a lone surrogate; the tokenizer would silently encode U+FFFD."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:
        c = ord(prompt[e.start])
        what = f"the byte 0x{c - 0xDC00:02x}, not UTF-8" if 0xDC80 <= c <= 0xDCFF else f"a lone surrogate U+{c:04X}"
        raise ValueError(f"--prompt: character {e.start + 1} is {what}: pass the prompt as UTF-8 text") from None


def run_generate(args: argparse.Namespace) -> int:
    import torch

    from fastlm.models import GPT, RewardModel
    from fastlm.models.generate import generate, stream_text

    if args.max_tokens < 0:
        raise ValueError(f"--max-tokens must be >= 0, got {args.max_tokens}")
    if not 0 <= args.temperature < float("inf"):  # NaN too
        raise ValueError(f"--temperature must be a finite number >= 0, got {args.temperature}")
    if args.seed is not None and not 0 <= args.seed < 1 << 64:
        raise ValueError(f"--seed must be in [0, 2**64), got {args.seed}")
    _check_utf8(args.prompt)
    if args.top_k < 0:
        raise ValueError(f"--top-k must be >= 0, got {args.top_k}")
    if not 0.0 < args.top_p <= 1.0:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")
    device = pick_device(args.device)
    model, tok, meta, path = load_checkpoint_model(args.ckpt, device)
    if isinstance(model, RewardModel):  # it scores text, it does not write
        raise ValueError(f"{path} holds a reward model: it scores responses and does not generate; generate "
                         "with a language model checkpoint (clm, or the sft/dpo/ppo/grpo/rloo policies)")
    if not isinstance(model, GPT):
        task = (meta.get("train_config") or {}).get("task", "mlm")
        raise ValueError(f"{path} holds a {type(model).__name__} ({task}) model: generation needs a "
                         "causal LM checkpoint; use `fastlm eval` for masked LMs")
    task = (meta.get("train_config") or {}).get("task", "clm")
    chat = task in CHAT_TASKS if args.chat is None else args.chat
    if chat:  # an instruction-tuned model: the prompt is a user turn, the reply ends the turn
        if "<|assistant_end|>" not in tok.special_tokens:
            raise ValueError(f"--chat: the tokenizer of {path} has no chat special tokens (<|assistant_end|>)")
        from fastlm.tokenizer.chat_template import render_prompt
        ids = render_prompt(tok, {"messages": [{"role": "user", "content": args.prompt}]})
        eos = None if args.ignore_eos else tok.special_tokens["<|assistant_end|>"]
    else:
        ids = tok.encode_ordinary(args.prompt)
        if not args.no_bos and "<|bos|>" in tok.special_tokens:
            ids = [tok.special_tokens["<|bos|>"]] + ids
        if not ids:
            why = "--no-bos leaves no token" if args.no_bos else "the tokenizer has no <|bos|>"
            raise ValueError(f"the prompt is empty and {why}: pass --prompt TEXT")
        eos = None if args.ignore_eos else _stop_id(tok)
    gen = torch.Generator().manual_seed(args.seed) if args.seed is not None else None
    print(f"{path} (step {meta.get('step', '?')}, {model.num_params():,} params, {device})",
          file=sys.stderr)
    out = sys.stdout
    if not chat:  # the continuation follows the prompt; a chat reply stands alone
        out.write(args.prompt)
        out.flush()
    t0, n = time.perf_counter(), 0

    def ids_until_eos():
        nonlocal n
        for i in generate(model, ids, max_new_tokens=args.max_tokens,
                          temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          eos_id=eos, generator=gen, kernels=kernels_of(meta)):
            n += 1
            if i == eos:
                return
            yield i

    with autocast_for(device):
        for piece in stream_text(tok, ids_until_eos()):
            if piece:
                out.write(piece)
                out.flush()
    out.write("\n")
    out.flush()
    dt = time.perf_counter() - t0
    print(f"{n} tokens in {dt:.2f} s ({n / max(dt, 1e-9):.1f} tokens/s)", file=sys.stderr)
    return 0
