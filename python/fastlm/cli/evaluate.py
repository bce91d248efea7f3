"""`fastlm eval --ckpt DIR DATA...`: loss, perplexity and bits per byte of a causal-LM checkpoint (loss,
perplexity and accuracy of a masked LM) on token shards or text; `fastlm eval --ckpt DIR --task NAME[,NAME]`:
greedy exact-match accuracy and mean reward on built-in tasks' held-out problems.

DATA is either token shards (a directory of ``fastlm-tokens`` headers or the ``.json`` headers; they must
have been encoded with the checkpoint's tokenizer: same sha256) or text inputs (files, directories, globs,
``builtin:NAME``, read with fastlm.data.readers and encoded with the checkpoint's tokenizer, one <|bos|>
before each document as in training). The tokens are read in order, as one stream, cut into rows of
``--seq-len`` tokens: every token of the first ``--max-tokens`` is predicted once (CLM; each row's first
token is conditioned only on the tokens of its row). MLM rows are masked as in training (the run's
mlm_probability, 80/10/10), each row with a generator seeded by (--seed, row), so figures are reproducible.

--task NAME[,NAME] (no DATA): ``--examples`` held-out problems per task (fastlm.posttrain.tasks: val split,
drawn with --seed, by default the run's seed: the problems of its own held-out evaluation, whose figures
then reproduce; the same --seed gives every checkpoint the same problems), each prompt rendered with the chat template
and answered greedily until <|assistant_end|> or --max-new-tokens; exact-match accuracy and mean reward
(partial credit) per task and their mean over tasks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from fastlm.cli.checks import check_output, check_range
from fastlm.cli.generate import add_ckpt_args, autocast_for, kernels_of, load_checkpoint_model, pick_device

MAX_BATCH = 4096  # rows (or prompts) per forward; more is one giant allocation, not a faster eval
MAX_SEED = 2**32 - 1  # MLM rows are seeded with seed * 1_000_003 + row, which must fit torch's 64 bits


def register(groups: argparse._SubParsersAction) -> None:
    p = groups.add_parser(
        "eval", help="loss, perplexity, bits per byte (MLM: accuracy) of a checkpoint on data",
        description=__doc__.split("\n\n", 1)[1].replace("``", "'"))
    add_ckpt_args(p)
    p.add_argument("data", nargs="*", metavar="DATA",
                   help="token shard dirs/headers, or text files, directories, globs, builtin:NAME")
    p.add_argument("--task", metavar="NAME[,NAME]",
                   help="instead of DATA: exact-match accuracy on built-in tasks (copy, reverse, sort, add)")
    p.add_argument("--examples", type=int, default=200,
                   help="--task: held-out problems per task, at most the task's (add: 993) (default: 200)")
    p.add_argument("--max-new-tokens", type=int, default=24,
                   help="--task: longest answer generated, in tokens (default: 24)")
    p.add_argument("--max-tokens", type=int, default=0,
                   help="evaluate at most this many target tokens (default: 0 = all)")
    p.add_argument("--batch", type=int, default=0,
                   help=f"rows per forward, at most {MAX_BATCH} (default: 8; --task: prompts per batch, "
                        "default 32)")
    p.add_argument("--seq-len", type=int, default=0,
                   help="tokens per row (default: 0 = the run's data.seq_len, else max_seq_len)")
    p.add_argument("--text-field", default="text", help="text field of JSON records (default: text)")
    p.add_argument("--seed", type=int, default=None,
                   help="MLM masking seed (default: 0); --task: which held-out problems (default: the run's seed, "
                        "the problems of its own evaluation); in [0, 2**32)")
    p.add_argument("--json", dest="json_out", metavar="OUT", help="also write the figures to this JSON file")
    p.set_defaults(func=run_eval)


def _shard_headers(paths: list[str]) -> list[str] | None:
    """The shard headers when every DATA is token shards, None when none is; mixing is an error."""
    from fastlm.tokenizer.shards import FORMAT_NAME

    def is_header(p: str) -> bool:
        if not (p.endswith(".json") and os.path.isfile(p)):
            return False
        try:
            with open(p, encoding="utf-8") as f:
                return json.load(f).get("format") == FORMAT_NAME
        except (ValueError, OSError, AttributeError):
            return False

    kinds = {}
    for p in paths:
        if os.path.isdir(p):
            heads = [os.path.join(p, n) for n in sorted(os.listdir(p)) if is_header(os.path.join(p, n))]
            kinds[p] = heads or None
        else:
            kinds[p] = [p] if is_header(p) else None
    shards = [p for p, h in kinds.items() if h]
    if shards and len(shards) != len(paths):
        text = [p for p, h in kinds.items() if not h]
        raise ValueError(f"DATA mixes token shards ({shards[0]}) and text ({text[0]}): evaluate them "
                         "separately")
    return [h for p in paths for h in kinds[p]] if shards else None


def _stream_from_shards(headers: list[str], tok_sha: str, vocab: int):
    from fastlm.train.data import TokenDataset

    ds = TokenDataset(headers)
    if ds.tokenizer_sha256 != tok_sha:
        raise ValueError(f"{ds.paths[0]}: encoded with tokenizer sha256 {ds.tokenizer_sha256[:12]}..., but "
                         f"the checkpoint's tokenizer is {tok_sha[:12]}...: encode the data with the "
                         "checkpoint's tokenizer.fastlm or pass text")
    if ds.vocab_size > vocab:
        raise ValueError(f"{ds.paths[0]}: vocab_size {ds.vocab_size} > the model's {vocab}")
    return ds.n_tokens, ds.tokens


def _stream_from_text(inputs: list[str], tok, text_field: str, limit: int):
    """Encode documents (<|bos|> + ids) until ``limit`` tokens (0 = all) -> (n, get(a, b))."""
    import numpy as np

    from fastlm.data.readers import read_records, record_text
    from fastlm.data.records import ErrorLog

    bos = tok.special_tokens.get("<|bos|>")
    parts, n = [], 0
    errors = ErrorLog(keep=2)
    for rec in read_records(inputs, text_field=text_field, errors=errors):
        if errors.total:  # refused below: the rest is only read, to count its malformed records too
            continue
        ids = tok.encode_ordinary(record_text(rec, text_field))
        if bos is not None:
            ids = [bos] + ids
        parts.append(np.asarray(ids, dtype=np.int64))
        n += len(ids)
        if limit and n > limit:
            break
    if errors.total:  # figures that silently leave records out would not be the data's
        raise ValueError(f"DATA: {errors.summary()}: fix or remove them "
                         "(--text-field names the text field of JSON records)")
    if not parts:
        raise ValueError(f"no text records in {inputs}")
    stream = np.concatenate(parts)
    return int(stream.size), lambda a, b: stream[a:b]


def _row_groups(total: int, seq_len: int, batch: int):
    """[(start, length)] groups covering [0, total): full rows ``batch`` at a time, then the short
    last row alone (rows in one group have one length)."""
    full = total // seq_len
    for i in range(0, full, batch):
        yield [(r * seq_len, seq_len) for r in range(i, min(i + batch, full))]
    if total % seq_len:
        yield [(full * seq_len, total % seq_len)]


def clm_batches(n_tokens: int, get, *, seq_len: int, batch: int, max_tokens: int):
    """(x, y) batches in which every target token 1..n of the stream is predicted once.

    >>> import numpy as np
    >>> s = np.arange(10)
    >>> [y.tolist() for _, y in clm_batches(10, lambda a, b: s[a:b], seq_len=4, batch=2, max_tokens=0)]
    [[[1, 2, 3, 4], [5, 6, 7, 8]], [[9]]]
    """
    import numpy as np
    import torch

    n_targets = n_tokens - 1 if not max_tokens else min(n_tokens - 1, max_tokens)
    if n_targets < 1:
        raise ValueError(f"the data holds {n_tokens} tokens: nothing to predict")
    for rows in _row_groups(n_targets, seq_len, batch):
        t = torch.from_numpy(np.stack([np.asarray(get(s, s + n + 1), dtype=np.int64) for s, n in rows]))
        yield t[:, :-1], t[:, 1:]


def mlm_batches(n_tokens: int, get, *, seq_len: int, batch: int, max_tokens: int, tok, meta, seed: int):
    """(masked ids, labels) rows of seq_len tokens, masked as the trainer masks (`MLMMasker`: each row
    with its own generator seeded by (``seed``, row index), so the figures do not depend on --batch)."""
    import numpy as np
    import torch

    from fastlm.train.batches import MLMMasker

    tc = meta.get("train_config") or {}
    masker = MLMMasker(tok, seed=seed, mlm_probability=float(tc.get("mlm_probability", 0.15)),
                       whole_word=bool(tc.get("whole_word_mask", False)))
    n = n_tokens if not max_tokens else min(n_tokens, max_tokens)
    for rows in _row_groups(n, seq_len, batch):
        ids = torch.from_numpy(np.stack([np.asarray(get(s, s + k), dtype=np.int64) for s, k in rows]))
        yield masker(ids, torch.tensor([s // seq_len for s, _ in rows]))


def _write_json(path: str, result: dict) -> None:
    from fastlm.data.io import atomic_write

    with atomic_write(path) as f:
        json.dump({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                   for k, v in result.items()}, f, indent=2)
        f.write("\n")
    print(f"wrote {path}", file=sys.stderr)


def _check_json_out(args: argparse.Namespace) -> None:
    """Refuse a --json OUT that cannot take the figures, before any work: a directory, a path under a
    file, or one of the DATA files (writing it would replace that input)."""
    if args.json_out:
        check_output(args.json_out, "--json", folder=False, inputs=args.data)


def _refuse_reward_model(model, path: str) -> None:
    from fastlm.models import RewardModel
    if isinstance(model, RewardModel):
        raise ValueError(f"{path} holds a reward model (a scalar score, no next-token head): evaluate a clm, "
                         "mlm or post-trained policy checkpoint (reward models report held-out pair accuracy "
                         "while they train)")


def run_task_eval(args: argparse.Namespace) -> int:
    """`fastlm eval --task`: exact-match accuracy and mean reward per built-in task."""
    from fastlm.models import GPT
    from fastlm.posttrain.tasks import exact_match, get_task

    names = [n.strip() for n in args.task.split(",") if n.strip()]
    if not names:
        raise ValueError("--task: name at least one task (copy, reverse, sort, add)")
    tasks = [get_task(n) for n in names]  # unknown names refused before loading anything
    if args.examples < 1 or args.max_new_tokens < 1:
        raise ValueError(f"--examples and --max-new-tokens must be >= 1; got {args.examples}, {args.max_new_tokens}")
    for task in tasks:  # a task has only so many distinct held-out problems
        if args.examples > task.size("val"):
            raise ValueError(f"--examples must be <= {task.size('val')} with --task {task.name} (its distinct "
                             f"held-out problems), got {args.examples}")
    check_range(args.batch, "--batch", 0, MAX_BATCH, " (0 = 32 prompts)")
    if args.seed is not None:
        check_range(args.seed, "--seed", 0, MAX_SEED)
    _check_json_out(args)
    device = pick_device(args.device)
    model, tok, meta, path = load_checkpoint_model(args.ckpt, device)
    _refuse_reward_model(model, path)
    if args.seed is None:  # the run's own held-out problems: its figures reproduce here
        seed = (meta.get("train_config") or {}).get("seed", 0)
        args.seed = seed if isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED else 0
    if not isinstance(model, GPT):
        raise ValueError(f"{path}: --task needs a causal LM that generates answers; this is a masked LM")
    batch = args.batch or 32  # prompts are short: more of them per forward than DATA rows
    t0 = time.perf_counter()
    per_task = {}
    with autocast_for(device):
        for task in tasks:
            r = exact_match(model, tok, task.examples("val", args.examples, args.seed),
                            max_new_tokens=args.max_new_tokens, device=device, batch=batch,
                            kernels=kernels_of(meta), n_samples=3)
            per_task[task.name] = {k: r[k] for k in ("accuracy", "reward", "n", "samples")}
            s = r["samples"][0]
            print(f"{task.name:<8} accuracy {r['accuracy']:.4f}  reward {r['reward']:.4f}  "
                  f"({r['n']} examples)  e.g. {s['prompt'].splitlines()[-1]!r} -> {s['response']!r}")
    dt = time.perf_counter() - t0
    acc = sum(t["accuracy"] for t in per_task.values()) / len(per_task)
    rew = sum(t["reward"] for t in per_task.values()) / len(per_task)
    if len(per_task) > 1:
        print(f"{'mean':<8} accuracy {acc:.4f}  reward {rew:.4f}  ({dt:.1f} s)")
    if args.json_out:
        _write_json(args.json_out, {"checkpoint": path, "step": meta.get("step"), "task": names,
                                    "split": "val", "examples": args.examples, "seed": args.seed,
                                    "max_new_tokens": args.max_new_tokens, "accuracy": acc,
                                    "reward": rew, "tasks": per_task, "seconds": round(dt, 3)})
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from fastlm.models import GPT
    from fastlm.tokenizer.shards import file_sha256
    from fastlm.train.evaluate import evaluate_clm, evaluate_mlm, token_byte_lengths

    if args.task is not None:
        if args.data:
            raise ValueError("pass either DATA (loss on text/shards) or --task (exact match), not both")
        return run_task_eval(args)
    if not args.data:
        raise ValueError("nothing to evaluate: pass DATA (token shards or text) or --task NAME")
    if args.max_tokens < 0:
        raise ValueError(f"--max-tokens must be >= 0, got {args.max_tokens}")
    check_range(args.batch, "--batch", 0, MAX_BATCH, " (0 = 8 rows)")
    args.batch = args.batch or 8
    if args.seq_len < 0:
        raise ValueError(f"--seq-len must be >= 0, got {args.seq_len}")
    args.seed = 0 if args.seed is None else args.seed
    check_range(args.seed, "--seed", 0, MAX_SEED)
    _check_json_out(args)
    device = pick_device(args.device)
    model, tok, meta, path = load_checkpoint_model(args.ckpt, device)
    _refuse_reward_model(model, path)
    clm = isinstance(model, GPT)
    max_len = model.config.max_seq_len
    seq_len = args.seq_len or int(((meta.get("train_config") or {}).get("data") or {}).get("seq_len") or max_len)
    if seq_len > max_len:
        raise ValueError(f"--seq-len {seq_len} > the model's max_seq_len {max_len}")
    tok_path = os.path.join(path, "tokenizer.fastlm")
    headers = _shard_headers(args.data)
    if headers is not None:
        n, get = _stream_from_shards(headers, file_sha256(tok_path), model.config.vocab_size)
    else:
        n, get = _stream_from_text(args.data, tok, args.text_field, args.max_tokens + 1 if args.max_tokens else 0)
    kernels = kernels_of(meta)
    t0 = time.perf_counter()
    with autocast_for(device):
        if clm:
            batches = clm_batches(n, get, seq_len=seq_len, batch=args.batch, max_tokens=args.max_tokens)
            r = evaluate_clm(model, batches, byte_lengths=token_byte_lengths(tok), kernels=kernels)
        else:
            batches = mlm_batches(n, get, seq_len=seq_len, batch=args.batch, max_tokens=args.max_tokens,
                                  tok=tok, meta=meta, seed=args.seed)
            r = evaluate_mlm(model, batches, kernels=kernels)
    dt = time.perf_counter() - t0
    result = {"checkpoint": path, "step": meta.get("step"), "task": "clm" if clm else "mlm",
              "data": list(args.data), "seq_len": seq_len, **r, "seconds": round(dt, 3)}
    if clm:
        print(f"loss {r['loss']:.4f}  ppl {r['ppl']:.2f}  bpb {r['bpb']:.4f}  tokens {r['tokens']:,}  "
              f"({dt:.1f} s)")
    else:
        print(f"loss {r['loss']:.4f}  ppl {r['ppl']:.2f}  accuracy {r['accuracy']:.4f}  masked tokens "
              f"{r['tokens']:,}  ({dt:.1f} s)")
    if args.json_out:
        _write_json(args.json_out, result)
    return 0
