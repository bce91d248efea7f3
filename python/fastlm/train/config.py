"""`TrainConfig`: every setting of a training run (pretraining CLM/MLM, post-training), as nested dataclasses.

Read from YAML/TOML with `load_train_config` (unknown keys and wrong types refused, naming the dotted
key), overridden with ``--set section.key=value``. The defaults are the README's main job: a tiny causal
LM on the built-in corpus that trains on a laptop CPU in a few minutes. No torch import here.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from fastlm.config import ConfigError, apply_overrides, from_dict, load_config_file


@dataclass
class DataConfig:
    """Where tokens come from. Either ``tokens`` (token shards written by `fastlm tokenizer encode`) with
    their ``tokenizer``, or raw ``text`` inputs that the run cleans, tokenizes and caches first."""
    text: list[str] = field(default_factory=lambda: ["builtin:pydoc", "builtin:shakespeare"])  # main job
    tokens: list[str] = field(default_factory=list)      # token shard dirs/headers; set -> `text` unused
    val_tokens: list[str] = field(default_factory=list)  # held-out shards; empty -> hold out val_fraction
    val_fraction: float = 0.02   # share of documents held out when val_tokens is empty (2%, as GPT-2)
    tokenizer: str = ""          # tokenizer of `tokens`; "" -> the one trained from `text` (cached)
    vocab_size: int = 4096       # when the run trains its tokenizer: small corpus, small vocabulary
    cache_dir: str = ""          # "" -> <out>/cache: cleaned text, tokenizer, shards reused across runs
    seq_len: int = 128           # tokens per row (<= model max_seq_len); 128 keeps the CPU main job short
    sampling: Literal["packed", "random"] = "packed"  # packed: every token once per epoch; random windows
    shuffle: bool = True         # packed: documents in a seeded order per epoch


@dataclass
class ModelConfig:
    """The model: a named size of GPTConfig (clm) or EncoderConfig (mlm), with field overrides."""
    size: str = "tiny"           # GPTConfig.named / EncoderConfig.named
    overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {n_layer: 4, d_model: 256}
    kernels: Literal["fastlm", "torch"] = "fastlm"  # fused fastlm.ops, or plain PyTorch


@dataclass
class OptimConfig:
    """AdamW and its schedule (schedules are pure functions of the step; see fastlm.train.schedule)."""
    lr: float = 3e-3             # peak lr: tiny models take a high one (nanoGPT shakespeare-char 1e-3)
    min_lr_ratio: float = 0.1    # final lr = lr * min_lr_ratio (Chinchilla's 10x decay)
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = 30       # linear warmup from 0 (10% of the default 300 steps)
    decay_fraction: float = 0.2  # wsd: share of steps in the final linear decay (MiniCPM's ~10-20%)
    weight_decay: float = 0.1    # on matrices only; norms, biases and embeddings get none
    beta1: float = 0.9
    beta2: float = 0.95          # 0.95 rather than 0.999: steadier with large lr (GPT-3, LLaMA)
    eps: float = 1e-8
    grad_clip: float = 1.0       # max global grad norm; 0 = off
    fused: Literal["auto", "on", "off"] = "auto"  # torch's fused AdamW where the device supports it


@dataclass
class PostConfig:
    """Post-training (sft, reward, dpo, ppo, grpo, rloo). Without ``data`` the built-in tasks
    (fastlm.posttrain.tasks: verifiable answers) provide SFT examples, preference pairs and prompts."""
    init_from: str = "auto"      # checkpoint/run dir or HF model dir; auto: newest run of the stage before
                                 # in <out> (sft <- clm; reward, dpo, ppo, grpo, rloo <- sft)
    data: list[str] = field(default_factory=list)      # sft: Alpaca/ShareGPT/messages/prompt-completion;
                                                       # reward/dpo: prompt/chosen/rejected; rl: prompts
    val_data: list[str] = field(default_factory=list)  # held-out; empty -> hold out data.val_fraction
    tasks: list[str] = field(default_factory=lambda: ["copy", "reverse", "add"])  # built-in, when no data
    task_examples: int = 4000    # built-in training examples per task (generated, seeded)
    eval_examples: int = 200     # built-in held-out exact-match examples per task
    train_on_prompt: bool = False  # sft: supervise the prompt tokens too (default: assistant tokens only)
    packing: bool = True         # sft: several examples per row, no attention across them; False: padding
    margin: float = 0.0          # reward: loss = -logsigmoid(r_chosen - r_rejected - margin)
    center_rewards: float = 0.0  # reward: + coef * (r_chosen + r_rejected)^2 keeps rewards near 0 (TRL: 0.01)
    beta: float = 0.1            # dpo: implicit-reward temperature (DPO paper's default)
    reference: Literal["precompute", "online"] = "precompute"  # dpo: reference log-probs once, or per step
    rpo_alpha: float = 0.0       # dpo: + rpo_alpha x the chosen answer's per-token NLL (RPO; TRL's name)
    reward_model: str = "auto"   # rl: reward-model checkpoint, or "task" (the built-in tasks' verifiable
                                 # reward); auto: newest reward run in <out>, else "task"
    prompts_per_step: int = 16   # rl: prompts per optimizer step (all ranks together)
    samples_per_prompt: int = 4  # grpo/rloo: group size for relative advantages (ppo uses 1)
    max_new_tokens: int = 24     # rl rollouts and exact-match evaluation
    temperature: float = 1.0     # rl rollout sampling; log-probs are scored at it too (0: greedy, scored at 1)
    top_k: int = 0               # rl rollout sampling; 0 = off
    top_p: float = 1.0           # rl rollout sampling; 1 = off
    ppo_epochs: int = 2          # passes over each batch of rollouts
    minibatches: int = 2         # optimizer steps per pass
    clip: float = 0.2            # policy ratio clip (PPO / GRPO)
    value_clip: float = 0.2      # ppo: value prediction clip around the rollout's values
    vf_coef: float = 0.1         # ppo: value loss weight
    gamma: float = 1.0           # ppo: discount (1: episodic text)
    lam: float = 0.95            # ppo: GAE lambda
    kl_coef: float = 0.05        # KL-to-reference penalty; 0 = off (and no reference model kept)
    kl_target: float = 0.0       # > 0: adaptive KL coefficient aiming at this KL (Ziegler et al. 2019)
    whiten_rewards: bool = True  # ppo: normalize rewards per batch
    entropy_coef: float = 0.0    # entropy bonus


@dataclass
class TrainConfig:
    """A pretraining run. Steps are optimizer steps of ``tokens_per_step`` tokens (all ranks together)."""
    task: Literal["clm", "mlm", "sft", "reward", "dpo", "ppo", "grpo", "rloo"] = "clm"
    run_name: str = ""           # "" -> "<task>-<size>-<YYYYmmdd-HHMMSS>"
    out: str = "runs"            # outputs in <out>/<run_name>/
    seed: int = 1337
    device: str = "auto"         # auto: cuda if available, else cpu
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    compile: bool = False        # torch.compile the model (slow start; pays off on long GPU runs)
    distributed: Literal["auto", "ddp", "fsdp"] = "auto"  # under torchrun; auto = ddp
    micro_batch: int = 16        # rows per forward/backward on each rank
    tokens_per_step: int = 0     # 0 -> micro_batch * seq_len * world size (no accumulation)
    max_steps: int = 300         # optimizer steps (main job: 300 x 2048 = 0.6M tokens, minutes on a CPU)
    max_time: float = 0.0        # seconds; > 0 stops the run early (wall-clock budgets, benchmarks)
    eval_every: int = 100        # steps; 0 = only at the end
    eval_tokens: int = 16384     # val tokens per evaluation (all ranks together)
    sample_every: int = 0        # steps; 0 = one sample at the end
    sample_prompt: str = "The"
    sample_tokens: int = 64
    ckpt_every: int = 200        # steps; 0 = only at the end
    keep_last: int = 2           # checkpoints kept (older ones deleted after a new one is complete)
    log_every: int = 10          # steps between console/JSONL log lines
    tensorboard: bool = False    # also write TensorBoard events (needs the tensorboard package)
    plot: bool = True            # PNG of train/val loss at the end (skipped with a note without matplotlib)
    spike_factor: float = 4.0    # a loss above spike_factor x its running mean is a spike: step skipped
    max_bad_steps: int = 20      # stop after this many skipped (spike/NaN/inf) steps in a row
    mlm_probability: float = 0.15  # mlm: share of tokens chosen (BERT)
    whole_word_mask: bool = False  # mlm: choose whole words
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    post: PostConfig = field(default_factory=PostConfig)

    def __post_init__(self):
        _check(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-safe), the inverse of ``from_dict(TrainConfig, ...)``."""
        return dataclasses.asdict(self)


def _scalars(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``(dotted name, value)`` of every field that is not a section."""
    out = []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        out += _scalars(v, f"{prefix}{f.name}.") if dataclasses.is_dataclass(v) else [(prefix + f.name, v)]
    return out


_INF_OK = ("max_time", "spike_factor")  # inf: no time limit, no spike test
MAX_INT = 2**31 - 1  # no count, size or seed needs more (10**30 rows per micro-batch hung the run)
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
RL_TASKS = ("ppo", "grpo", "rloo")


def _check(c: TrainConfig) -> None:
    """Refuse values no run can use, naming the key and the allowed range (before any data is prepared)."""
    bad = [f"{k}={v}" for k, v in _scalars(c)
           if isinstance(v, float) and (math.isnan(v) or (math.isinf(v) and k not in _INF_OK))]
    if bad:
        raise ConfigError(f"{', '.join(bad)}: must be a finite number")
    for name, v in _scalars(c):
        if isinstance(v, int) and not isinstance(v, bool) and v > MAX_INT:
            raise ConfigError(f"{name} must be at most {MAX_INT}, got {v}")
    positive = {"micro_batch": c.micro_batch, "max_steps": c.max_steps, "data.seq_len": c.data.seq_len,
                "data.vocab_size": c.data.vocab_size, "keep_last": c.keep_last, "log_every": c.log_every,
                "sample_tokens": c.sample_tokens, "eval_tokens": c.eval_tokens}
    for name, v in positive.items():
        if v <= 0:
            raise ConfigError(f"{name} must be > 0, got {v}")
    non_negative = {"seed": c.seed, "tokens_per_step": c.tokens_per_step, "max_time": c.max_time,
                    "eval_every": c.eval_every, "sample_every": c.sample_every, "ckpt_every": c.ckpt_every,
                    "optim.lr": c.optim.lr, "optim.warmup_steps": c.optim.warmup_steps,
                    "optim.weight_decay": c.optim.weight_decay, "optim.grad_clip": c.optim.grad_clip,
                    "optim.eps": c.optim.eps}
    for name, v in non_negative.items():
        if v < 0:
            raise ConfigError(f"{name} must be >= 0, got {v}")
    for name, v in {"data.val_fraction": c.data.val_fraction, "optim.min_lr_ratio": c.optim.min_lr_ratio,
                    "optim.decay_fraction": c.optim.decay_fraction}.items():
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"{name} must be in [0, 1], got {v}")
    for name, v in {"optim.beta1": c.optim.beta1, "optim.beta2": c.optim.beta2}.items():
        if not 0.0 <= v < 1.0:  # torch's AdamW refuses the rest, but only once the data is prepared
            raise ConfigError(f"{name} must be in [0, 1), got {v}")
    if not 0.0 < c.mlm_probability <= 1.0:  # 0: no position has a label, nothing to learn or evaluate
        raise ConfigError(f"mlm_probability must be in (0, 1], got {c.mlm_probability}")
    if not DEVICE.fullmatch(c.device):  # torch would name neither the key nor the choices
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {c.device!r}")
    if not c.out:
        raise ConfigError("out must name a directory (use out=. for the current one), got an empty string")
    if c.task in ("clm", "mlm", "sft") and c.tokens_per_step % (c.micro_batch * c.data.seq_len):
        raise ConfigError(f"tokens_per_step {c.tokens_per_step} is not a multiple of micro_batch x data.seq_len "
                          f"= {c.micro_batch * c.data.seq_len} (0: one micro-batch per rank)")
    if c.task in ("clm", "mlm") and not c.data.tokens:  # the run trains its own tokenizer
        from fastlm.tokenizer.core import DEFAULT_SPECIALS
        if c.data.vocab_size < 256 + len(DEFAULT_SPECIALS):
            raise ConfigError(f"data.vocab_size must be >= {256 + len(DEFAULT_SPECIALS)} (256 bytes + "
                              f"{len(DEFAULT_SPECIALS)} special tokens), got {c.data.vocab_size}")
    p = c.post
    for name, v in {"post.task_examples": p.task_examples, "post.eval_examples": p.eval_examples,
                    "post.prompts_per_step": p.prompts_per_step, "post.samples_per_prompt": p.samples_per_prompt,
                    "post.max_new_tokens": p.max_new_tokens, "post.ppo_epochs": p.ppo_epochs,
                    "post.minibatches": p.minibatches, "post.beta": p.beta}.items():
        if v <= 0:
            raise ConfigError(f"{name} must be > 0, got {v}")
    for name, v in {"post.clip": p.clip, "post.value_clip": p.value_clip, "post.vf_coef": p.vf_coef,
                    "post.kl_coef": p.kl_coef, "post.kl_target": p.kl_target, "post.temperature": p.temperature,
                    "post.top_k": p.top_k, "post.center_rewards": p.center_rewards,
                    "post.entropy_coef": p.entropy_coef, "post.rpo_alpha": p.rpo_alpha}.items():
        if v < 0:
            raise ConfigError(f"{name} must be >= 0, got {v}")
    for name, v in {"post.gamma": p.gamma, "post.lam": p.lam}.items():
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"{name} must be in [0, 1], got {v}")
    if not 0.0 < p.top_p <= 1.0:  # 0 would keep no token (the sampler refuses it, after the model is loaded)
        raise ConfigError(f"post.top_p must be in (0, 1], got {p.top_p}")
    from fastlm.posttrain.tasks import TASKS  # plain Python, no torch
    unknown = [t for t in p.tasks if t not in TASKS]
    if unknown:
        raise ConfigError(f"post.tasks: unknown task(s) {unknown}; built-in tasks: {list(TASKS)}")
    if p.kl_target > 0 and p.kl_coef == 0:  # the adaptive coefficient is multiplied: from 0 it stays 0
        raise ConfigError(f"post.kl_target={p.kl_target} adapts post.kl_coef, which is 0: set post.kl_coef > 0 "
                          "(its starting value) or post.kl_target=0")
    if c.task in ("grpo", "rloo") and p.samples_per_prompt < 2:
        raise ConfigError(f"task={c.task} compares samples of one prompt: post.samples_per_prompt must be >= 2")
    if c.task in RL_TASKS:
        rollouts = p.prompts_per_step * (1 if c.task == "ppo" else p.samples_per_prompt)
        if p.minibatches > rollouts:  # a minibatch is at least one rollout: fewer updates than asked
            raise ConfigError(f"post.minibatches {p.minibatches} > the {rollouts} rollouts of a step "
                              f"(post.prompts_per_step x samples per prompt)")
    if c.tensorboard:  # found before the data is prepared, not when the logger opens (no import: a lookup)
        import importlib.util
        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("tensorboard=true needs the tensorboard package: pip install tensorboard "
                              "(or pip install 'fastlm[tensorboard]')")
    if not c.spike_factor > 1.0:
        raise ConfigError(f"spike_factor must be > 1, got {c.spike_factor}")
    if c.max_bad_steps < 1:
        raise ConfigError(f"max_bad_steps must be >= 1, got {c.max_bad_steps}")
    if "/" in c.run_name or c.run_name in (".", ".."):
        raise ConfigError(f"run_name {c.run_name!r} must be a plain name, not a path (use out= for the folder)")


def config_notes(c: TrainConfig) -> list[str]:
    """Settings that are allowed but likely not meant, one line each (the CLI prints them). A warmup as long
    as the run is one: refusing it would refuse every short test run (``--set max_steps=3``).

    >>> config_notes(TrainConfig(max_steps=10))[0].split(":")[0]
    'optim.warmup_steps 30 >= max_steps 10'
    """
    notes = []
    w, m = c.optim.warmup_steps, c.max_steps
    if w >= m:
        notes.append(f"optim.warmup_steps {w} >= max_steps {m}: the whole run is lr warmup (the lr only rises, "
                     f"to {c.optim.lr * m / w:.3g} at the last step (optim.lr={c.optim.lr:g}), and never decays)")
    return notes


# Defaults per task, applied by load_train_config (the CLI's path) under the file and --set values; a
# TrainConfig built directly (TrainConfig(...), from_dict) keeps the field defaults. Why: post-training starts
# from a trained model and wants fewer, gentler steps than pretraining. Learning rates measured on the built-in
# tasks with the tiny model on CPU (benchmarks/bench_posttrain.py): SFT at 3e-3 stalls (exact match 0.01 after
# 600 steps), 1e-3 learns; DPO at 2e-4 cut exact match 0.51 -> 0.34, 5e-5 raised it.
# SFT schedule, from the main job's base (1000 steps, lr 1e-3, held-out exact match at steps 500/750/1000):
# cosine 0.02/0.08/0.12 (0.25 in an earlier run), constant 0.03/0.22/0.61, wsd 0.03/0.22/0.72: the tasks are
# learned late and suddenly (the copy circuit forms), and cosine's early decay delays that.
# DPO from that SFT model (0.72), 250 steps: rpo_alpha 0 cut exact match to 0.51 (copy 1.0 -> 0.82, reverse
# 1.0 -> 0.59; held-out pair accuracy 0.78, margin 0.28); rpo_alpha 1 kept 0.72 (pair accuracy 0.81, margin 0.25).
# RL: big, gentle updates. From the default chain's SFT model (main-job base, 4096-id BPE, exact match 0.25)
# the policy gradient is mostly noise along directions the greedy answers are very sensitive to: one SGD step
# of L2 norm 0.03 along the gradient of 3072 samples cut held-out exact match 0.24 -> 0.04 (random directions
# of that size: no change). GRPO at lr 1e-4 with 64 samples x 4 updates per step cut it to 0.05 in 50 steps;
# 3e-5 / 1e-5 to 0.12-0.13; lr 1e-5 with 256 samples per update at temperature 0.7 kept it (0.247 -> 0.247
# after 100 steps). So: 256 rollouts per step, one update each, temperature 0.7, lr 1e-5.
_RL_DEFAULTS = {"max_steps": 100, "eval_every": 50, "ckpt_every": 50, "log_every": 5,
                "optim": {"lr": 1e-5, "warmup_steps": 0, "schedule": "constant", "weight_decay": 0.0}}
_RL_POST = {"ppo_epochs": 1, "minibatches": 1, "temperature": 0.7}
_GROUPS = {"prompts_per_step": 32, "samples_per_prompt": 8}  # grpo/rloo; ppo samples each prompt once
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "sft": {"max_steps": 1000, "eval_every": 250, "ckpt_every": 250,
            "optim": {"lr": 1e-3, "warmup_steps": 10, "weight_decay": 0.0, "schedule": "wsd"}},
    "reward": {"max_steps": 300, "micro_batch": 32, "eval_every": 100, "ckpt_every": 100,
               "optim": {"lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 10}},
    "dpo": {"max_steps": 250, "micro_batch": 32, "eval_every": 125, "ckpt_every": 125,
            "optim": {"lr": 5e-5, "weight_decay": 0.0, "warmup_steps": 10},
            "post": {"task_examples": 1000, "rpo_alpha": 1.0}},
    "ppo": {**_RL_DEFAULTS, "post": {**_RL_POST, "prompts_per_step": 256}},
    "grpo": {**_RL_DEFAULTS, "post": {**_RL_POST, **_GROUPS}},
    "rloo": {**_RL_DEFAULTS, "post": {**_RL_POST, **_GROUPS}},
}


def load_train_config(path: Optional[str] = None, overrides: Optional[list[str]] = None, *,
                      base: Optional[dict[str, Any]] = None) -> TrainConfig:
    """The config of ``path`` (YAML/TOML, may be None) on top of ``base`` (a dict, e.g. the CLI's
    ``--task``), with ``key=value`` overrides applied last (a key given twice: the later value wins).

    >>> load_train_config(None, ["optim.lr=1e-3", "task=mlm"]).optim.lr
    0.001
    """
    data: dict[str, Any] = dict(base or {})
    where = "config"
    if path is not None:
        if not path:  # `--config $CFG` with CFG unset: not the defaults
            raise ConfigError("config file path is empty")
        file_data = load_config_file(path)
        data = _merge(data, file_data)
        where = path
    if overrides:
        data = apply_overrides(data, overrides)
        where = f"{where} (with --set)" if path else "--set"
    task = data.get("task", "clm")
    if isinstance(task, str) and task in TASK_DEFAULTS:  # an unknown task is refused by from_dict below
        data = _merge(TASK_DEFAULTS[task], data)
    try:
        return from_dict(TrainConfig, data, where=where)
    except TypeError as e:  # a dataclass refusing its arguments
        raise ConfigError(f"{where}: {e}") from None
    except ConfigError as e:  # a range refused by _check names the key: add where it was given
        if where == "config" or str(e).startswith(where):
            raise
        raise ConfigError(f"{where}: {e}") from None


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
