"""Shared helpers for the trainer tests: a small tokenizer + token shards from pydoc topics, tiny configs."""
import json
import os

from corpora import PYDOC

from fastlm.config import from_dict
from fastlm.tokenizer import Tokenizer
from fastlm.tokenizer.shards import encode_to_shards, file_sha256
from fastlm.train.config import TrainConfig

TINY_GPT = {"n_layer": 1, "n_head": 2, "d_model": 32, "max_seq_len": 64}


def edit_state(ckpt: str, fn) -> None:
    """Apply ``fn`` to a checkpoint's parsed state.json and write it back (a hand edit, for refusal tests)."""
    p = os.path.join(ckpt, "state.json")
    with open(p) as f:
        s = json.load(f)
    fn(s)
    with open(p, "w") as f:
        json.dump(s, f)


def make_shards(root: str, *, n_docs: int = 60, vocab_size: int = 320, specials=None) -> tuple[str, str]:
    """``(tokenizer_file, shard_dir)`` under ``root`` (built once per root)."""
    tok_file = os.path.join(root, "tokenizer.fastlm")
    shard_dir = os.path.join(root, "tokens")
    if os.path.exists(tok_file):
        return tok_file, shard_dir
    texts = [PYDOC[k] for k in sorted(PYDOC)][:n_docs]
    kw = {} if specials is None else {"special_tokens": specials}
    tok = Tokenizer.train_from_iterator(texts, vocab_size, **kw)
    tok.save(tok_file)
    bos = tok.special_tokens.get("<|bos|>")
    encode_to_shards(tok, texts, shard_dir, tokenizer_sha256=file_sha256(tok_file), separator_id=bos)
    return tok_file, shard_dir


def tiny_config(root: str, out: str, **over) -> TrainConfig:
    """A few-step CPU run on ``make_shards(root)`` with a 1-layer, 32-wide model."""
    tok, shards = make_shards(root)
    data = {"task": "clm", "out": out, "run_name": "run", "micro_batch": 4, "max_steps": 6, "eval_every": 0,
            "eval_tokens": 512, "ckpt_every": 0, "log_every": 1, "sample_tokens": 8, "plot": False,
            "data": {"tokens": [shards], "tokenizer": tok, "seq_len": 32, "val_fraction": 0.1},
            "model": {"size": "tiny", "overrides": dict(TINY_GPT)},
            "optim": {"lr": 3e-3, "warmup_steps": 2}}
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        else:
            data[k] = v
    return from_dict(TrainConfig, data)


def torchrun(args, nproc: int = 2, timeout: int = 300):
    """Run ``python -m torch.distributed.run --standalone --nproc_per_node=nproc *args`` (CPU, gloo) and return
    the finished process; a failure shows each rank's own error (faulthandler dumps native crashes)."""
    import subprocess
    import sys
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        # the torchrun summary is last; the rank that failed first printed its error before it
        raise AssertionError(f"torchrun exited {p.returncode}\n--- stdout (tail)\n{p.stdout[-2000:]}\n"
                             f"--- stderr (head)\n{p.stderr[:6000]}\n--- stderr (tail)\n{p.stderr[-2000:]}")
    return p


WORKER = """import json, sys, torch
torch.set_num_threads(1)
from fastlm.config import from_dict
from fastlm.train.config import TrainConfig
from fastlm.train.trainer import run
run(from_dict(TrainConfig, json.loads(sys.argv[1])), resume=sys.argv[2] or None, console=False)
"""


def train_in_torchrun(tmp_path, cfg, *, resume: str = "", nproc: int = 2):
    """`fastlm.train.trainer.run(cfg, resume=...)` on ``nproc`` gloo ranks (a worker script under ``tmp_path``)."""
    import json
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    return torchrun([str(script), json.dumps(cfg.to_dict()), resume], nproc=nproc)
