"""Training objectives for the shared loop (`fastlm.train.trainer`), the CLM/MLM ones, and `post.init_from`.

The loop in ``fastlm.train.trainer`` is the same for clm, mlm, sft, reward and dpo; an *objective* supplies
everything that differs: the model, the batch source, the loss lines, the evaluation and the sample.

The interface (helpers writing an objective subclass `Objective` and register it in ``OBJECTIVES``)::

    obj = ObjectiveClass(cfg: TrainConfig, info: DistInfo, *, run_dir: str, log: Callable[[str], None])
    # after __init__, these attributes are set:
    obj.model            # nn.Module on the CPU, built (seeded with cfg.seed) or loaded from post.init_from
    obj.model_config     # JSON dict of its config (models.config_to_dict; the checkpoint's "model_config")
    obj.tokenizer        # fastlm Tokenizer
    obj.tokenizer_path   # its file (copied into every checkpoint as tokenizer.fastlm)
    obj.seq_len          # row length: steps hold tokens_per_step / (micro_batch * world * seq_len) micro-steps
    obj.init_from        # the resolved post.init_from path (recorded in checkpoint meta), or None
    obj.summary          # {key: number} logged once at the start of a fresh run (data report), may be {}
    obj.next_micro(n_global) -> batch        # this rank's contiguous share of the next global micro-batch
                                             # of n_global rows (rows: packed/padded sequences, or pairs)
    obj.state_dict() / obj.load_state_dict(d)  # the data position (JSON-safe), for exact resume; it also
                                               # holds what the position means (seed, example count and
                                               # digest: `check_data_state`), so other data is refused
    obj.loss(model, batch, kernels=) -> (loss_sum, n_units, metric_sums)
        # loss_sum: 0-dim tensor, the SUM of the loss over this rank's units (graph attached);
        # n_units: float, how many units it sums over (tokens with a label for LM losses, pairs for
        # reward/dpo); metric_sums: {"train/accuracy": float sum over units, ...} (plain floats).
        # The loop all-reduces n_units and metric sums over micro-steps and ranks and divides by the total,
        # so gradient accumulation and DDP give exactly the gradient of the mean over the whole step
        # (the loop backpropagates loss_sum and divides the gradients by the global n_units after).
        # ``model`` is the wrapped module (DDP/FSDP/compiled): call it, don't reach into it.
    obj.evaluate(model) -> {"val/loss": ..., ...}   # logged keys; {} when there is no val data; every rank
                                                    # calls it (split + all-reduce, or all ranks evaluate all);
                                                    # model is the raw module; result.val drops "val/"
    obj.sample(model, device, autocast) -> str      # a short sample for the console ("" for none)
    obj.tokens(batch) -> int                        # real (non-padding) input tokens, for tokens/s
    obj.to_device(batch, device) -> batch           # default: every tensor in a dict/tuple/list moved

Batches are whatever the objective's ``loss`` reads (LM: ``(x, y)``; SFT: a dict of tensors). Masking
contract for token losses: ``labels[t]`` is the target of position ``t`` (already shifted), -100 = no loss.

``post.init_from`` (`resolve_init`): "auto" = the newest run under ``cfg.out`` whose checkpoint's task is
the stage before (sft <- clm; reward, dpo, ppo, grpo, rloo <- sft); "none" = a fresh model of ``model.size``
(tests, ablations); a checkpoint or run dir; or a Hugging Face Llama directory (``config.json``), imported
with ``fastlm.posttrain.hf_import.load_hf``. `load_init` returns the model with the tokenizer it was
trained with.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch

from fastlm.train.config import TrainConfig
from fastlm.train.distributed import DistInfo, barrier, broadcast_object

# the task that a post-training stage starts from when post.init_from is "auto"
STAGE_BEFORE = {"sft": "clm", "reward": "sft", "dpo": "sft", "ppo": "sft", "grpo": "sft", "rloo": "sft"}

# task -> "module:Class" of its objective (imported lazily: the post-training modules are optional)
OBJECTIVES = {
    "clm": "fastlm.posttrain.objective:LMObjective",
    "mlm": "fastlm.posttrain.objective:LMObjective",
    "sft": "fastlm.posttrain.sft:SFTObjective",
    "reward": "fastlm.posttrain.reward:RewardObjective",
    "dpo": "fastlm.posttrain.dpo:DPOObjective",
}


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor (also inside dicts, tuples, lists) moved to ``device``.

    >>> to_device({"x": torch.zeros(2), "n": 3}, torch.device("cpu"))["n"]
    3
    """
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


class Objective:
    """Base class: what one task gives the shared training loop (see the module docstring)."""
    model: torch.nn.Module
    model_config: dict
    tokenizer: Any
    tokenizer_path: str
    seq_len: int
    init_from: Optional[str] = None
    summary: dict = {}

    def next_micro(self, n_global: int) -> Any:
        raise NotImplementedError

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: Any, *, kernels: str) -> tuple[torch.Tensor, float, dict]:
        raise NotImplementedError

    def evaluate(self, model: torch.nn.Module) -> dict:
        return {}

    def sample(self, model: torch.nn.Module, device: torch.device, autocast=None) -> str:
        return ""

    def tokens(self, batch: Any) -> int:
        x = batch["input_ids"] if isinstance(batch, dict) else batch[0]
        return int(x.numel())

    def to_device(self, batch: Any, device: torch.device) -> Any:
        return to_device(batch, device)


def make_objective(cfg: TrainConfig, info: DistInfo, *, run_dir: str,
                   log: Callable[[str], None] = print) -> Objective:
    """The objective of ``cfg.task`` (clm, mlm, sft, reward, dpo; RL tasks have their own loop).

    >>> # make_objective(TrainConfig(task="sft"), init_distributed("cpu"), run_dir="runs/x")
    """
    if cfg.task not in OBJECTIVES:
        raise ValueError(f"task {cfg.task!r} has no objective for the shared loop (tasks: {sorted(OBJECTIVES)}; "
                         "ppo/grpo/rloo run in fastlm.posttrain.rl)")
    module, cls = OBJECTIVES[cfg.task].split(":")
    return getattr(importlib.import_module(module), cls)(cfg, info, run_dir=run_dir, log=log)


def examples_digest(examples: Iterable[Sequence[Sequence[int]]]) -> str:
    """A short sha256 of training examples, each a tuple of int lists (ids, masks...), in order: two runs
    with the same digest train on the same rendered examples (same records, template, truncation, masks).

    >>> a, b = examples_digest([([1, 2], [0, 1])]), examples_digest([([1, 2], [1, 1])])
    >>> a == examples_digest([([1, 2], [0, 1])]) != b, len(a)
    (True, 16)
    """
    h = hashlib.sha256()
    for example in examples:
        for part in example:
            a = np.asarray(part, dtype=np.int64)
            h.update(np.int64(a.size).tobytes())  # lengths too: [1, 2] + [3] is not [1] + [2, 3]
            h.update(a.tobytes())
    return h.hexdigest()[:16]


def check_data_state(state: dict, mine: dict, settings: dict[str, str], *, what: str) -> None:
    """Refuse a saved data position (``state``) taken over other training data: every key of ``mine`` (this
    run's seed, example count, digest...) must equal the saved one; ``settings[key]`` names the settings that
    decide it. Keys a position saved before they existed lacks are not checked.

    >>> check_data_state({"seed": 0}, {"seed": 1}, {"seed": "seed"}, what="SFT examples")
    Traceback (most recent call last):
    ValueError: SFT examples: state seed=0 does not match this run's 1 (set by seed)
    """
    for key, value in mine.items():
        if key in state and state[key] != value:
            raise ValueError(f"{what}: state {key}={state[key]!r} does not match this run's {value!r} "
                             f"(set by {settings[key]})")


# ------------------------------------------------------------------------------------------ CLM / MLM

class LMObjective(Objective):
    """Pretraining: CLM (next token) or MLM (masked tokens) on token shards, via `fastlm.train.batches`."""

    def __init__(self, cfg: TrainConfig, info: DistInfo, *, run_dir: str, log: Callable[[str], None] = print):
        from fastlm.models import build_model, config_to_dict
        from fastlm.train.batches import load_batches
        from fastlm.train.prepare import prepare_data
        self.cfg, self.info = cfg, info
        # the model settings are checked before the data is prepared (minutes on a large corpus); the real
        # vocabulary size is the tokenizer's, known only after
        self._model_config(vocab_size=cfg.data.vocab_size)
        # rank 0 prepares (tokenizer, shards), the others wait and reuse it
        prepared = prepare_data(cfg, log=log) if info.is_main else None
        barrier(info)
        prepared = broadcast_object(prepared, info)
        self.batches = load_batches(cfg, prepared, info)
        self.tokenizer, self.tokenizer_path = self.batches.tokenizer, self.batches.tokenizer_path
        self.seq_len = cfg.data.seq_len
        torch.manual_seed(cfg.seed)  # same init on every rank (FSDP shards a full model)
        mcfg = self._model_config(vocab_size=self.tokenizer.n_vocab)
        self.model = build_model(mcfg)
        self.model_config = config_to_dict(mcfg)

    def _model_config(self, *, vocab_size: int):
        from fastlm.models import model_config_for
        cfg = self.cfg
        try:
            mcfg = model_config_for(cfg.task, cfg.model.size, cfg.model.overrides, vocab_size=vocab_size)
        except ValueError as e:  # "unknown size", "n_head must be > 0": say which settings
            if str(e).startswith("model."):
                raise
            raise ValueError(f"model.size={cfg.model.size!r}, model.overrides={cfg.model.overrides}: {e}") from None
        if cfg.data.seq_len > mcfg.max_seq_len:
            raise ValueError(f"data.seq_len {cfg.data.seq_len} > the model's max_seq_len {mcfg.max_seq_len} "
                             "(set model.overrides.max_seq_len)")
        return mcfg

    def next_micro(self, n_global: int):
        return self.batches.next_micro(n_global)

    def state_dict(self) -> dict:
        return self.batches.train.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.batches.train.load_state_dict(state)

    def loss(self, model, batch, *, kernels: str):
        x, y = batch
        return model(x, y, kernels=kernels, reduction="sum"), float((y != -100).sum()), {}

    def evaluate(self, model) -> dict:
        from fastlm.train.evaluate import evaluate_clm, evaluate_mlm
        if self.batches.val is None:
            return {}
        kernels = self.cfg.model.kernels
        if self.cfg.task == "clm":
            r = evaluate_clm(model, self.batches.val, byte_lengths=self.batches.byte_lengths, kernels=kernels)
            return {"val/loss": r["loss"], "val/ppl": r["ppl"], "val/bpb": r["bpb"]}
        r = evaluate_mlm(model, self.batches.val, kernels=kernels)
        return {"val/loss": r["loss"], "val/ppl": r["ppl"], "val/accuracy": r["accuracy"]}

    def sample(self, model, device, autocast=None) -> str:
        from fastlm.train.sampling import sample_text
        return sample_text(model, self.tokenizer, self.cfg, device, autocast)


# ------------------------------------------------------------------------------------------ init_from

def _checkpoint_task(ckpt: str) -> Optional[str]:
    import json
    try:
        with open(os.path.join(ckpt, "state.json"), encoding="utf-8") as f:  # meta, without the weights
            return json.load(f).get("train_config", {}).get("task")
    except (OSError, ValueError):
        from fastlm.train.checkpoint import load_checkpoint
        return load_checkpoint(ckpt, optimizer=False).meta.get("train_config", {}).get("task")


def is_hf_dir(path: str) -> bool:
    """A Hugging Face model directory (``config.json`` + weights; `fastlm.posttrain.hf_import.is_hf_dir`).

    >>> is_hf_dir("/nonexistent")
    False
    """
    from fastlm.posttrain.hf_import import is_hf_dir as hf_dir
    return hf_dir(path)


def resolve_init(cfg: TrainConfig) -> Optional[str]:
    """The checkpoint (or HF dir) that ``cfg``'s post-training run starts from; None for ``init_from=none``.

    >>> from fastlm.config import from_dict
    >>> resolve_init(from_dict(TrainConfig, {"task": "sft", "post": {"init_from": "none"}})) is None
    True
    """
    from fastlm.train.checkpoint import CheckpointError, latest_checkpoint
    src = cfg.post.init_from
    if src.lower() in ("none", "scratch", ""):
        return None
    if src == "auto":
        before = STAGE_BEFORE.get(cfg.task)
        if before is None:
            raise ValueError(f"post.init_from=auto: task {cfg.task!r} has no stage before it")
        found = []
        if os.path.isdir(cfg.out):
            for name in os.listdir(cfg.out):
                ckpt = latest_checkpoint(os.path.join(cfg.out, name)) if os.path.isdir(
                    os.path.join(cfg.out, name, "checkpoints")) else None
                if ckpt is not None and _checkpoint_task(ckpt) == before:
                    found.append((os.path.getmtime(ckpt), ckpt))
        if not found:
            raise ValueError(f"post.init_from=auto: no {before} run with a checkpoint in {os.path.abspath(cfg.out)}: "
                             f"run `fastlm-train --task {before} --set out={cfg.out}` first, or set "
                             "post.init_from to a checkpoint, a run dir or a Hugging Face model dir "
                             "(none: a fresh model)")
        return max(found)[1]
    if not os.path.exists(src):
        raise ValueError(f"post.init_from: {src} does not exist")
    if is_hf_dir(src):
        return os.path.abspath(src)
    ckpt = latest_checkpoint(src, strict=True)
    if ckpt is None:
        raise CheckpointError(f"post.init_from: {src} holds no complete fastlm checkpoint and is not a "
                              "Hugging Face model dir (config.json)")
    return ckpt


@dataclass
class InitModel:
    """A model to start from, with its tokenizer."""
    model: torch.nn.Module     # on the CPU, train mode
    model_config: dict         # config_to_dict(model.config)
    tokenizer: Any
    tokenizer_path: str
    source: Optional[str]      # the resolved init_from (None: fresh)
    meta: dict                 # the source checkpoint's meta ({} for HF / fresh)


def load_init(cfg: TrainConfig, *, tokenizer_dir: str, tokenizer_path: str = "") -> InitModel:
    """The model ``cfg.post.init_from`` resolves to (see `resolve_init`). HF tokenizers are saved as
    ``tokenizer_dir/tokenizer.fastlm``. ``init_from=none`` builds ``model.size`` fresh (seeded) with the
    tokenizer file ``tokenizer_path`` (or ``data.tokenizer``), which must then be given.

    >>> # load_init(TrainConfig(task="sft"), tokenizer_dir="runs/sft-x")
    """
    from fastlm.models import build_model, config_to_dict, model_config_for
    from fastlm.tokenizer import Tokenizer
    from fastlm.train.checkpoint import CheckpointError, load_model
    src = resolve_init(cfg)
    if src is None:
        path = tokenizer_path or cfg.data.tokenizer
        if not path:
            raise ValueError("post.init_from=none builds a fresh model: set data.tokenizer to its tokenizer file")
        tok = Tokenizer.from_file(path)
        torch.manual_seed(cfg.seed)
        mcfg = model_config_for("clm", cfg.model.size, cfg.model.overrides, vocab_size=tok.n_vocab)
        model = build_model(mcfg)
        return InitModel(model, config_to_dict(mcfg), tok, os.path.abspath(path), None, {})
    if is_hf_dir(src):
        from fastlm.posttrain.hf_import import load_hf  # lazy: transformers-side code
        model, tok = load_hf(src)
        os.makedirs(tokenizer_dir, exist_ok=True)
        path = os.path.join(tokenizer_dir, "tokenizer.fastlm")
        tok.save(path)
        model.train()
        return InitModel(model, config_to_dict(model.config), tok, path, src, {})
    model, tok, meta = load_model(src)
    if tok is None:
        raise CheckpointError(f"post.init_from: {src} has no tokenizer.fastlm (needed to render chat data)")
    model.train()
    return InitModel(model, dict(meta["model_config"]), tok, os.path.join(src, "tokenizer.fastlm"), src, meta)
