"""The RL post-training loop (ppo, grpo, rloo): `run_rl(cfg)` samples responses, scores them, and optimizes
the policy with a clipped objective; it evaluates, samples and checkpoints like the pretraining loop.

Read top to bottom: init (run dir, device, precision) -> models (policy from ``post.init_from``, frozen
reference, reward) -> prompts -> optimizer -> one loop whose iteration ``step`` first runs the occasional
blocks (eval, sample, checkpoint), then one RL step, then logging. One RL step = one rollout batch of
``post.prompts_per_step`` prompts (x ``samples_per_prompt`` for grpo/rloo; ppo samples each prompt once),
then ``ppo_epochs`` passes of ``minibatches`` optimizer steps over it; the lr schedule counts RL steps.

The algorithms (formulas in `fastlm.posttrain.rl_losses`):
- ppo (Ziegler et al. 2019, Ouyang et al. 2022, TRL PPOTrainer): per-token reward = -kl_coef (logp - logp_ref)
  (k1), plus the sequence score at the last response token; rewards whitened per batch (``whiten_rewards``,
  mean kept, as TRL); GAE(gamma, lam) on a value head; advantages whitened; loss = clipped policy loss +
  vf_coef x clipped value loss - entropy_coef x entropy; ``kl_target`` > 0 adapts kl_coef after each
  rollout batch (Ziegler; horizon `KL_HORIZON`; ppo only: grpo/rloo keep kl_coef fixed).
- grpo (Shao et al. 2024) / rloo (Ahmadian et al. 2024): ``samples_per_prompt`` samples per prompt, one
  advantage per sample (grpo: (r - mean) / (std + eps); rloo: r - mean of the others) on all its tokens,
  clipped ratio objective, + kl_coef x k3 KL to the reference in the loss (GRPO's estimator; used for rloo
  too rather than RLOO's KL-in-reward) - entropy_coef x entropy.

Simplifications (deliberate; each is where TRL or the papers offer more):
- One process only (refused under torchrun): rollouts, scoring and updates run on one device.
- Value head: a zero-initialized ``Linear(d_model, 1)`` on the policy's final hidden states (shared body),
  not a separate value model initialized from the reward model: no second network to hold, and the
  value loss (weighted by vf_coef) shapes the shared body a little. It is saved in the checkpoint's
  state.json (``value_head``), so model.safetensors stays a plain GPT that generate/eval/export load.
- Losses are token-level means over every response token of a minibatch (TRL PPO, DAPO), not GRPO's
  per-sequence mean of per-token means; a group whose rewards are all equal gives zero advantage.
- Old log-probs and values are recomputed after sampling with the training forward (right-padded rows,
  no dropout: the policy is kept in eval mode), so the first minibatch's ratio is 1 up to float rounding
  (sampling-time log-probs, from the left-padded cached pass, are not reused). Policy, old and reference
  log-probs and the logged entropy are those of the sampling distribution, logits / ``post.temperature``
  (as TRL); temperature 0 (greedy rollouts) scores at 1.
- RL steps ignore ``micro_batch``/``tokens_per_step``/``data.seq_len``: a step is ``prompts_per_step`` prompts,
  each minibatch one forward/backward (no accumulation); rows are prompt + at most ``max_new_tokens``.
- No missing-EOS penalty, no reward clipping, no value warmup, no separate value lr.
- The reference is the policy at ``init_from`` (reloaded from there on resume); kl_coef 0 and kl_target 0
  keep no reference at all.
- Rewards: ``post.reward_model`` = a reward-model checkpoint (same tokenizer; scores prompt + response +
  ``<|assistant_end|>`` (added when the policy did not stop, as the reward model was trained) read at that
  last token; no penalty for not stopping) or "task" (the built-in tasks'
  verifiable reward on the decoded response); "auto" = the newest reward run in ``out``, else "task".
- Prompts: the built-in tasks' train split (``post.tasks``), or ``post.data`` files (chat records or
  ``{"prompt": ...}``; fields ``task`` + ``answer`` make a record scorable by the task reward), visited in
  a seeded order per epoch. Held-out evaluation (greedy exact match and mean task reward, `exact_match`)
  runs on the tasks' val split, or on the ``{"prompt", "task", "answer"}`` records of ``post.val_data``
  (else a held-out ``data.val_fraction`` of ``post.data``'s distinct prompts: the copies of a held-out prompt
  leave training with it; copies are scored once, in ``post.val_data`` too); other records are not evaluated.
  A prompt that leaves no room for ``post.max_new_tokens`` within the policy's max_seq_len is dropped and
  counted (``too_long``, the first few named with file:line), as SFT drops an example too long to keep a
  target; no training prompt left is an error.

Resume (``--resume``): weights, value head, optimizer, prompt position, loop state, KL controller and RNG states come
back, so a stopped and resumed run ends as one that never stopped (same weights and metrics). The reference
and an "auto" ``post.reward_model`` are the checkpoint's (a newer reward run in ``out`` is not picked up); the
KL coefficient is the checkpoint's under an adaptive ``post.kl_target``, else ``post.kl_coef`` as given. The
prompt position counts prompts, not steps: another ``post.prompts_per_step`` or ``post.samples_per_prompt``
continues with the next prompt not yet visited (a note says the run no longer matches one that never stopped).
A position over other training prompts (``post.data`` or its records, ``post.tasks``, ``post.task_examples``,
``seed``, the hold-out: ``post.val_data``, ``data.val_fraction``; a ``post.max_new_tokens`` that drops other
prompts) is refused, naming the setting; evaluation-only changes (``post.eval_examples``, one
``post.val_data`` file for another) are allowed.

Logged every ``log_every`` steps (metrics.jsonl): reward/mean, reward/std (sequence scores), kl (k1 summed
over a response, batch mean), entropy (per response token), clip_frac, approx_kl, response_len (tokens),
value_loss (ppo; null otherwise), train/loss, grad_norm, kl_coef, lr, rollout_s, step_s, tokens_per_s
(sampled tokens per rollout second); val/exact_match and val/reward at eval steps; data/prompts,
data/val_prompts and data/dropped at step 0 of a new run.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import time
from dataclasses import replace
from typing import Any, Optional

import torch
import torch.nn as nn

from fastlm.posttrain.logprobs import token_logprobs
from fastlm.posttrain.objective import check_data_state, examples_digest
from fastlm.posttrain.rl_losses import (AdaptiveKLController, entropy_from_logits, gae, group_advantages, kl_k1,
                                        kl_k3, masked_mean, policy_loss, ppo_rewards, value_loss, whiten)
from fastlm.posttrain.rollout import RolloutBatch, build_batch, sample_responses
from fastlm.posttrain.sft import SFTReport
from fastlm.train.config import TrainConfig
from fastlm.train.schedule import learning_rate
from fastlm.train.stop import StopOnSignal
from fastlm.train.trainer import (TrainResult, _grad_norm, _optimizer, _precision, _resolve_resume, _run_dir,
                                  _open_run_dir, branch_history, check_resume_meta, discard_if_unstarted)

KL_HORIZON = 10000  # adaptive KL controller horizon (Ziegler et al. / TRL default)


class PolicyWithValue(nn.Module):
    """What the optimizer trains: the policy GPT and (ppo) a value head on its final hidden states."""

    def __init__(self, policy: nn.Module, value: bool, temperature: float = 1.0):
        super().__init__()
        self.policy, self.temperature = policy, temperature
        self.value_head = nn.Linear(policy.config.d_model, 1) if value else None
        if value:
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)

    def score(self, batch: RolloutBatch, *, kernels: str, entropy: Any = False):
        """``(logp, values or None, entropy or None)``, each (B, T): log-probs through `token_logprobs` (the
        fused loss path); the final hidden states are caught on the way (a hook on ``policy.norm``) for the
        value head and the entropy, so one forward serves all three. ``entropy``: False, True (no graph) or
        "grad" (differentiable, for an entropy bonus). Log-probs and entropy are those of the sampling
        distribution, logits / ``temperature``."""
        caught: list[torch.Tensor] = []
        hook = self.policy.norm.register_forward_hook(lambda m, i, o: caught.append(o))
        try:
            logp = token_logprobs(self.policy, batch.ids, batch.labels, kernels=kernels,
                                  temperature=self.temperature)
        finally:
            hook.remove()
        h = caught[-1]
        values = self.value_head(h).squeeze(-1).float() if self.value_head is not None else None
        ent = None
        if entropy:  # logits of the response positions only: (N_actions, V); a graph only when trained
            with contextlib.nullcontext() if entropy == "grad" else torch.no_grad():
                ent = torch.zeros_like(logp)
                ent[batch.mask] = entropy_from_logits(self.policy.lm_head(h[batch.mask]) / self.temperature)
        return logp, values, ent


class PromptSource:
    """Prompts in a seeded order per epoch; the cursor (epoch, pos) is the resumable data position.

    The position counts in prompts, not steps, so a resume with another ``post.prompts_per_step`` or
    ``post.samples_per_prompt`` continues with the next prompt not yet visited. The state also holds what it
    counts in (the seed, the prompt count and a digest of the prompts and their reward meta), so a resume over
    other prompts is refused, naming the settings that decide them.

    >>> s = PromptSource([([i], {}) for i in range(5)], seed=0)
    >>> len(s.next(2)), {k: s.state_dict()[k] for k in ("epoch", "pos", "seed", "prompts")}
    (2, {'epoch': 0, 'pos': 2, 'seed': 0, 'prompts': 5})
    """

    def __init__(self, items: list[tuple[list[int], dict]], seed: int):
        if not items:
            raise ValueError("no RL prompts: post.data gave no records and post.tasks is empty")
        self.items, self.seed, self.epoch, self.pos = items, seed, 0, 0
        self._sha: Optional[str] = None  # examples_digest of the items, at the first state_dict/load_state_dict
        self._order = self._perm()

    def _perm(self) -> list[int]:
        order = list(range(len(self.items)))
        random.Random(self.seed * 1000003 + self.epoch).shuffle(order)
        return order

    def next(self, n: int) -> list[tuple[list[int], dict]]:
        out = []
        for _ in range(n):
            if self.pos == len(self.items):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._perm()
            out.append(self.items[self._order[self.pos]])
            self.pos += 1
        return out

    def _meaning(self) -> dict:
        """What the position counts in: the order's seed and the prompts (ids, and the meta that the task
        reward scores against: the same prompts with other answers are other data)."""
        if self._sha is None:
            self._sha = examples_digest((ids, list(json.dumps(meta, sort_keys=True).encode("utf-8")))
                                        for ids, meta in self.items)
        return {"seed": self.seed, "prompts": len(self.items), "prompts_sha256": self._sha}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, **self._meaning()}

    def load_state_dict(self, s: dict) -> None:
        """Resume at ``s``; a position over other prompts or another order is refused (a ValueError naming the
        settings; positions saved before these checks hold only epoch and pos, and still load)."""
        check_data_state(s, self._meaning(), PROMPT_SETTINGS, what="RL training prompts")
        self.epoch, self.pos = int(s["epoch"]), int(s["pos"])
        self._order = self._perm()


# the settings that decide each part of an RL data position (`PromptSource.load_state_dict` names them)
PROMPT_SETTINGS = {"seed": "seed",
                   "prompts": "post.data, post.val_data, data.val_fraction, post.tasks, post.task_examples, "
                              "post.max_new_tokens (prompts too long for it are dropped)",
                   "prompts_sha256": "the records of post.data (or post.tasks), post.val_data, data.val_fraction, "
                                     "post.max_new_tokens: as many prompts, other tokens or answers"}
# the config keys behind them, compared with the checkpoint's to say which one changed (`_changed_data_settings`)
PROMPT_CONFIG = (("seed",), ("post", "data"), ("post", "val_data"), ("data", "val_fraction"), ("post", "tasks"),
                 ("post", "task_examples"), ("post", "max_new_tokens"))


def _changed_data_settings(saved: dict, cfg: TrainConfig) -> list[str]:
    """``name: saved -> now`` for each setting of `PROMPT_CONFIG` that differs from the checkpoint's config."""
    now, out = cfg.to_dict(), []
    for path in PROMPT_CONFIG:
        a, b = saved, now
        for k in path:
            a = a.get(k) if isinstance(a, dict) else None
            b = b.get(k) if isinstance(b, dict) else None
        if a is not None and a != b:
            out.append(f"{'.'.join(path)}: {a!r} -> {b!r}")
    return out


def _user_prompt(tok, text: str) -> list[int]:
    from fastlm.tokenizer.chat_template import render_prompt
    return render_prompt(tok, {"messages": [{"role": "user", "content": text}]})


def _read_prompts(paths: list[str], tok, *, max_seq_len: Optional[int] = None, max_new_tokens: int = 0,
                  need_task: bool = False, report: Optional[SFTReport] = None) -> list[tuple[list[int], dict, Any]]:
    """(prompt ids, reward meta, Example or None) per record of ``paths``: a record ``{"prompt": str}`` is one
    user turn, any chat record (messages, Alpaca, ShareGPT...) is rendered up to its last assistant reply;
    ``task`` + ``answer`` fields are the meta of the task reward, and make a plain prompt an `Example` that
    the held-out exact match can score.

    A prompt that leaves no room for ``max_new_tokens`` within ``max_seq_len`` (when given) is dropped and
    counted in ``report`` (``too_long``, with its file:line), as SFT drops an example with no target left.
    Like a malformed line, a record that cannot be used is refused when read (a ValueError naming its
    file:line), not when the run first samples or scores it: one that is no prompt, a ``task`` that is not
    a built-in task, an ``answer`` that is not a string or integer, and (``need_task``: the task reward) one
    without ``task`` and ``answer``."""
    from fastlm.data.readers import read_records
    from fastlm.data.records import ErrorLog
    from fastlm.posttrain.tasks import TASKS, Example
    from fastlm.tokenizer.chat_template import render_prompt
    report = report if report is not None else SFTReport()
    items = []
    errors = ErrorLog(keep=2)  # malformed lines: all counted, then refused with file:line (below)
    for rec in read_records(paths, text_field="prompt", errors=errors):
        report.read += 1
        d, where = rec.data, f"{rec.source}:{rec.line}"
        meta = {k: d[k] for k in ("task", "answer") if k in d}
        plain = isinstance(d.get("prompt"), str) and not any(k in d for k in ("completion", "chosen", "messages"))
        try:
            ids = _user_prompt(tok, d["prompt"]) if plain else render_prompt(tok, d)
        except Exception as e:  # a record that is no prompt: name it
            raise ValueError(f"{where}: not an RL prompt record ({e})") from None
        if "task" in meta and (not isinstance(meta["task"], str) or meta["task"] not in TASKS):
            raise ValueError(f"{where}: unknown task {meta['task']!r} in an RL prompt record "
                             f"(built-in tasks: {', '.join(TASKS)})")
        if "answer" in meta:
            if isinstance(meta["answer"], bool) or not isinstance(meta["answer"], (str, int)):
                raise ValueError(f"{where}: the 'answer' of an RL prompt record must be a string, got "
                                 f"{type(meta['answer']).__name__} {meta['answer']!r}")
            meta["answer"] = str(meta["answer"])
        if need_task and len(meta) < 2:
            raise ValueError(f"{where}: post.reward_model=task needs prompts with a task and an answer (this "
                             f"record has no {'answer' if 'task' in meta else 'task'!r} field); give a reward "
                             "model, or add 'task' and 'answer' fields")
        if max_seq_len is not None and len(ids) + max_new_tokens > max_seq_len:
            report.drop("too_long", where)
            continue
        ex = Example(d["prompt"], meta["answer"], meta) if plain and len(meta) == 2 else None
        items.append((ids, meta, ex))
    if errors.total:
        raise ValueError(f"{list(paths)}: {errors.summary('RL prompt record')}: fix or remove them")
    return items


def _prompts(cfg: TrainConfig, tok, *, max_seq_len: Optional[int] = None, task_reward: bool = False,
             report: Optional[SFTReport] = None) -> tuple[list[tuple[list[int], dict]], list]:
    """``(train items (prompt ids, reward meta), held-out Examples)``: the built-in tasks' train and val
    splits; or ``post.data`` (held out: ``post.val_data``, else a seeded ``data.val_fraction`` of its records
    that have a task and an answer, at least one record left to train on). A prompt that leaves no room for
    ``post.max_new_tokens`` within ``max_seq_len`` (the policy's) is dropped and counted in ``report``; no
    training prompt left is a ValueError. ``task_reward`` refuses a record without task and answer when read
    (`_read_prompts`)."""
    p, report = cfg.post, report if report is not None else SFTReport()
    if not p.data:
        from fastlm.posttrain.tasks import examples_for

        def fitting(split: str, n: int) -> list:  # (ids, Example) of the split's prompts that fit
            out = []
            for i, ex in enumerate(examples_for(list(p.tasks), split, n, cfg.seed) if p.tasks else []):
                report.read += 1
                ids = _user_prompt(tok, ex.prompt)
                if max_seq_len is not None and len(ids) + p.max_new_tokens > max_seq_len:
                    report.drop("too_long", f"task:{ex.meta.get('task')}:{split}:{i}")
                else:
                    out.append((ids, ex))
            return out
        src = f"the built-in tasks post.tasks={list(p.tasks)}"
        train = [(ids, ex.meta) for ids, ex in fitting("train", p.task_examples)]
        val = [ex for _, ex in fitting("val", p.eval_examples)]
    else:
        src = f"post.data {list(p.data)}"
        check = dict(max_seq_len=max_seq_len, max_new_tokens=p.max_new_tokens, report=report)
        items = _read_prompts(list(p.data), tok, need_task=task_reward, **check)
        if p.val_data:
            held_out = _read_prompts(list(p.val_data), tok, **check)
        else:  # held out: only records the exact match can score (task + answer; the others would go unused),
            # and never every record (data.val_fraction 1 keeps one to train on, as the other stages do). A
            # prompt is held out with all its copies (records rendering the same ids): a copy left to train on
            # would make the held-out exact match score a trained prompt
            copies: dict[tuple, list[int]] = {}
            for i, (ids, _, _) in enumerate(items):
                copies.setdefault(tuple(ids), []).append(i)
            order = [key for key, idx in copies.items() if any(items[i][2] is not None for i in idx)]
            random.Random(cfg.seed).shuffle(order)
            held: set[int] = set()
            for key in order[:math.ceil(cfg.data.val_fraction * len(order))]:
                if len(items) - len(held) - len(copies[key]) < 1:
                    break
                held.update(copies[key])
            held_out = [it for i, it in enumerate(items) if i in held]
            items = [it for i, it in enumerate(items) if i not in held]
        train = [(ids, meta) for ids, meta, _ in items]
        val, seen = [], set()  # a record and its copies are one held-out prompt, scored once
        for ids, _, ex in held_out:
            if ex is not None and (tuple(ids), ex.answer) not in seen:
                seen.add((tuple(ids), ex.answer))
                val.append(ex)
        val = val[:p.eval_examples]
    if not train:  # self-contained: under --quiet the report is not printed
        why = (f" (too_long: prompt + post.max_new_tokens {p.max_new_tokens} > the model's max_seq_len "
               f"{max_seq_len}: shorten the prompts or lower post.max_new_tokens)" if report.dropped else "")
        kept = report.read - sum(report.dropped.values())
        raise ValueError(f"no RL training prompts in {src}: "
                         f"{report.summary(kept, one_line=True, unit='prompts')}{why}")
    return train, val  # the tasks' val split: post.eval_examples per task; post.data's: that many in all


def _find_reward_run(out: str) -> Optional[str]:
    """The newest checkpoint under ``out`` whose run's task is "reward"."""
    from fastlm.train.checkpoint import latest_checkpoint
    found = []
    if os.path.isdir(out):
        for name in os.listdir(out):
            if not os.path.isdir(os.path.join(out, name, "checkpoints")):
                continue
            ckpt = latest_checkpoint(os.path.join(out, name))
            try:
                with open(os.path.join(ckpt, "state.json"), encoding="utf-8") as f:
                    task = json.load(f).get("train_config", {}).get("task")
            except (OSError, ValueError, TypeError):
                continue
            if task == "reward":
                found.append((os.path.getmtime(ckpt), ckpt))
    return max(found)[1] if found else None


class RewardFn:
    """Sequence scores (N,) for rollouts: a reward model, or the built-in tasks' verifiable reward."""

    def __init__(self, cfg: TrainConfig, tokenizer, tokenizer_path: str, device: torch.device, say):
        from fastlm.train.checkpoint import CheckpointError, latest_checkpoint
        self.tok, self.kernels, self.model = tokenizer, cfg.model.kernels, None
        src = cfg.post.reward_model
        if src == "auto":
            src = _find_reward_run(cfg.out) or "task"
        self.source = src
        if src == "task":
            return
        from fastlm.posttrain.reward import load_reward_model
        from fastlm.tokenizer.shards import file_sha256
        ckpt = latest_checkpoint(src, strict=True) if os.path.exists(src) else None
        if ckpt is None:
            raise CheckpointError(f"post.reward_model: {src} holds no complete checkpoint (use \"task\" for the "
                                  "built-in tasks' reward, or run `fastlm-train --task reward` first)")
        model, _ = load_reward_model(ckpt, device=str(device))
        if file_sha256(os.path.join(ckpt, "tokenizer.fastlm")) != file_sha256(tokenizer_path):
            raise CheckpointError(f"post.reward_model: {ckpt} was trained with another tokenizer than the policy's")
        self.model = model.requires_grad_(False)
        self.source = ckpt
        say(f"reward model: {ckpt}")

    @torch.no_grad()
    def __call__(self, prompts: list[list[int]], responses: list[list[int]], metas: list[dict],
                 eos: int) -> torch.Tensor:
        if self.model is not None:  # rows as the reward model was trained: the answer closed by eos
            from fastlm.posttrain.reward import score_ids
            rows = [list(p) + list(r) + ([] if r and r[-1] == eos else [eos]) for p, r in zip(prompts, responses)]
            return score_ids(self.model, rows, kernels=self.kernels).float()
        from fastlm.posttrain.tasks import reward
        out = []
        for r, meta in zip(responses, metas):
            if "task" not in meta or "answer" not in meta:
                raise ValueError("post.reward_model=task needs prompts with a task and an answer (built-in tasks, "
                                 "or post.data records with 'task' and 'answer' fields); give a reward model")
            out.append(reward(meta, self.tok.decode(r[:-1] if r and r[-1] == eos else r)))
        return torch.tensor(out, dtype=torch.float32)


def _b64_state(g: torch.Generator) -> str:
    import base64
    return base64.b64encode(g.get_state().numpy().tobytes()).decode("ascii")


def _set_b64_state(g: torch.Generator, s: str) -> None:
    import base64
    g.set_state(torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8))


def run_rl(cfg: TrainConfig, *, resume: Optional[str] = None, console: bool = True) -> TrainResult:
    """Train ``cfg`` (task ppo, grpo or rloo) from ``post.init_from``; ``resume`` = a run or checkpoint dir.

    >>> # run_rl(load_train_config(None, ["task=grpo", "post.reward_model=task"]))
    """
    from fastlm.train.distributed import cleanup, init_distributed
    if cfg.task not in ("ppo", "grpo", "rloo"):
        raise ValueError(f"run_rl trains ppo, grpo or rloo, got task={cfg.task!r}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(f"task={cfg.task} runs in one process (RL is not distributed yet): run it without torchrun")
    info = init_distributed(cfg.device)
    created: list[str] = []
    try:
        with discard_if_unstarted(created), StopOnSignal() as stop:
            return _train_rl(cfg, info, resume, console, created, stop)
    finally:
        cleanup(info)


def _train_rl(cfg: TrainConfig, info, resume: Optional[str], console: bool,
              created: Optional[list[str]] = None, stop: Optional[StopOnSignal] = None) -> TrainResult:
    from fastlm.posttrain.objective import load_init
    from fastlm.posttrain.tasks import exact_match
    from fastlm.train import checkpoint as ck
    from fastlm.train.distributed import full_state, load_full_state
    from fastlm.train.metrics import MetricsLogger, plot_losses
    p, ppo = cfg.post, cfg.task == "ppo"

    # ---- init: run dir, device, precision
    device = info.device
    precision = _precision(cfg, device)
    resume_ckpt = _resolve_resume(resume) if resume else None
    state = ck.load_checkpoint(resume_ckpt) if resume_ckpt else None
    if state is not None:
        check_resume_meta(state.meta, resume_ckpt, {"generator": str, "kl_coef": (int, float), "init_from": str,
                                                    **({"value_head": dict} if ppo else {})})
    if state is not None and state.meta.get("train_config", {}).get("task") != cfg.task:
        raise ck.CheckpointError(f"{resume_ckpt}: task {state.meta.get('train_config', {}).get('task')!r} differs "
                                 f"from {cfg.task!r} (resume with the checkpoint's own task)")
    run_dir = _run_dir(cfg, info, resume_ckpt, state.meta if state is not None else None)
    say = print if console else (lambda *a, **k: None)
    _open_run_dir(cfg, run_dir, created)
    say(f"fastlm-train: {cfg.task} run in {run_dir} (device {device}, {precision})")
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
    torch.manual_seed(cfg.seed)

    # ---- models: policy (+ value head), frozen reference, reward
    init_cfg = replace(cfg, post=replace(p, init_from=state.meta["init_from"])) if state else cfg
    init = load_init(init_cfg, tokenizer_dir=run_dir)
    if type(init.model).__name__ != "GPT":
        raise ValueError(f"post.init_from: {init.source} is a {type(init.model).__name__}; RL needs a causal LM (GPT)")
    tok, policy = init.tokenizer, init.model.to(device).eval()  # eval: no dropout (ratios 1 at the start)
    use_ref = p.kl_coef > 0 or p.kl_target > 0
    reference = copy.deepcopy(policy).requires_grad_(False) if use_ref else None
    t_score = p.temperature if p.temperature > 0 else 1.0  # log-probs of the sampling distribution; greedy: t=1
    trainable = PolicyWithValue(policy, value=ppo, temperature=t_score).to(device)
    reward_cfg = cfg  # resumed: the reward the run was trained with, not a newer "auto" one (as init_from)
    if state is not None and p.reward_model == "auto" and isinstance(state.meta.get("reward_model"), str):
        reward_cfg = replace(cfg, post=replace(p, reward_model=state.meta["reward_model"]))
    reward_fn = RewardFn(reward_cfg, tok, init.tokenizer_path, device, say)
    eos, pad_id = tok.special_id("<|assistant_end|>"), tok.special_id("<|bos|>")  # pad: any id (masked)
    say(f"policy: {init.source} ({policy.num_params():,} params); reference: {'yes' if use_ref else 'none'}; "
        f"reward: {reward_fn.source}")

    # ---- prompts, evaluation set, optimizer, generator (sampling and minibatch order)
    report = SFTReport()
    train_items, val_examples = _prompts(cfg, tok, max_seq_len=policy.config.max_seq_len,
                                         task_reward=reward_fn.model is None, report=report)
    dropped = sum(report.dropped.values())
    say(f"{cfg.task} prompts: {report.summary(report.read - dropped, unit='prompts')}"
        + (f"\n  (too_long: prompt + post.max_new_tokens {p.max_new_tokens} > the model's max_seq_len "
           f"{policy.config.max_seq_len})" if dropped else "")
        + f"\n  {len(train_items)} train / {len(val_examples)} held-out prompts")
    source = PromptSource(train_items, cfg.seed)
    optimizer = _optimizer(trainable, cfg, device)
    gen = torch.Generator().manual_seed(cfg.seed)
    G = 1 if ppo else p.samples_per_prompt
    kl_ctl = AdaptiveKLController(p.kl_coef, target=p.kl_target, horizon=KL_HORIZON)
    loop = {"step": 0, "skipped": 0, "bad_run": 0}

    # ---- resume: weights, value head, optimizer, prompt cursor, loop state, RNG
    if state is not None:
        saved_cfg = state.meta["train_config"]
        try:
            source.load_state_dict(state.meta["data_state"])
        except (ValueError, KeyError, TypeError) as e:  # PromptSource names the settings; say which ones changed
            changed = _changed_data_settings(saved_cfg, cfg)
            raise ck.CheckpointError(
                f"--resume {resume_ckpt}: its data position does not fit this run's training data ({e})"
                + (f"; changed since the checkpoint: {'; '.join(changed)}" if changed else "")
                + ": resume with the data settings saved in the checkpoint (post.* data, seed)") from None
        saved_post = saved_cfg.get("post") or {}
        changed = [f"post.{k} {saved_post[k]} -> {getattr(p, k)}" for k in ("prompts_per_step", "samples_per_prompt")
                   if saved_post.get(k, getattr(p, k)) != getattr(p, k) and not (ppo and k == "samples_per_prompt")]
        if changed:  # allowed: the prompts continue where they stopped (PromptSource counts prompts, not steps)
            say(f"note: {', '.join(changed)}: the prompts continue where they stopped, but the run no longer "
                "matches one that never stopped")
        mstate = {f"policy.{k}": v for k, v in state.model_state.items()}
        if ppo:
            mstate.update({f"value_head.{k}": torch.tensor(v) for k, v in state.meta["value_head"].items()})
        load_full_state(trainable, optimizer, mstate, state.optimizer_state)
        loop.update(state.meta["loop"])
        if p.kl_target > 0:  # the adaptive controller's state; a fixed coefficient is post.kl_coef's (as changed)
            kl_ctl.value = float(state.meta["kl_coef"])
        ck.set_rng_state(state.meta["rng"])
        _set_b64_state(gen, state.meta["generator"])
        say(f"resumed from {resume_ckpt} at step {loop['step']}")
        del state
    start_step = loop["step"]
    branch_history(run_dir, resume_ckpt)
    logger = MetricsLogger(run_dir, total_steps=cfg.max_steps, console=console, tensorboard=cfg.tensorboard,
                           start_step=start_step)
    if resume_ckpt is None:  # as the other objectives' data summary
        logger.log(0, **{"data/prompts": len(train_items), "data/val_prompts": len(val_examples),
                         "data/dropped": dropped})

    def sample_line(prompt: list[int], response: list[int]) -> str:
        return f"{tok.decode(prompt)!r} -> {tok.decode(response)!r}"

    # ---- the loop
    result = TrainResult(run_dir=run_dir, checkpoint=resume_ckpt, step=start_step)
    t_start, step, last_sample = time.time(), start_step, ""
    stop = stop or StopOnSignal()
    stop.arm()  # a SIGTERM from here on: this step, a checkpoint, then stop (fastlm.train.stop)
    while True:
        last = step >= cfg.max_steps
        fresh = step == start_step and resume_ckpt is not None
        if cfg.max_time > 0 and not last and time.time() - t_start > cfg.max_time:
            last, result.stopped = True, "max_time"
        if not last and stop.requested:
            last, result.stopped = True, "sigterm"
            say(f"SIGTERM: stopping at step {step} with a checkpoint (another SIGTERM ends the run at once)")
        quick = result.stopped == "sigterm"  # a grace period before SIGKILL: the checkpoint only

        # -- occasional blocks: eval, sample, checkpoint
        if val_examples and (last or (cfg.eval_every and step % cfg.eval_every == 0)) and not fresh and not quick:
            with autocast:
                r = exact_match(policy, tok, val_examples, max_new_tokens=p.max_new_tokens, device=device,
                                batch=64, kernels=cfg.model.kernels)
            result.val = {"exact_match": r["accuracy"], "reward": r["reward"], "n": r["n"]}
            logger.log(step, **{"val/exact_match": r["accuracy"], "val/reward": r["reward"]})
        if (last or (cfg.sample_every and step % cfg.sample_every == 0 and step > 0)) and not fresh and last_sample:
            result.sample = last_sample
            if not last:
                logger.message(f"sample @ {step}: {last_sample}")
        if step > 0 and not fresh and (last or (cfg.ckpt_every and step % cfg.ckpt_every == 0)):
            mstate, ostate = full_state(trainable, optimizer)
            meta = {"model_config": init.model_config, "train_config": cfg.to_dict(),
                    "data_state": source.state_dict(), "rng": ck.rng_state(), "generator": _b64_state(gen),
                    "loop": dict(loop), "kl_coef": kl_ctl.value, "init_from": init.source or "none",
                    "reward_model": reward_fn.source, "val": result.val, "world_size": 1}
            if ppo:
                meta["value_head"] = {k[len("value_head."):]: v.tolist() for k, v in mstate.items()
                                      if k.startswith("value_head.")}
            result.checkpoint = ck.save_checkpoint(
                os.path.join(run_dir, "checkpoints"), step,
                model_state={k[len("policy."):]: v for k, v in mstate.items() if k.startswith("policy.")},
                optimizer_state=ostate, meta=meta, tokenizer_path=init.tokenizer_path, keep_last=cfg.keep_last)
            del mstate, ostate
        if last:
            break

        # -- one RL step: rollout, score, advantages, then ppo_epochs x minibatches updates
        t0 = time.time()
        lr = learning_rate(step, cfg.optim, cfg.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        items = [it for it in source.next(p.prompts_per_step) for _ in range(G)]  # a group's samples adjacent
        prompts, metas = [ids for ids, _ in items], [m for _, m in items]
        with autocast:
            responses = sample_responses(policy, prompts, max_new_tokens=p.max_new_tokens, eos_id=eos,
                                         pad_id=pad_id, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p,
                                         generator=gen, kernels=cfg.model.kernels)
        t_roll = time.time() - t0
        batch = build_batch(prompts, responses, pad_id=pad_id).to(device)
        mask = batch.mask
        N = len(responses)
        with torch.no_grad(), autocast:
            scores = reward_fn(prompts, responses, metas, eos).to(device)
            old_logp, old_values, _ = trainable.score(batch, kernels=cfg.model.kernels)
            ref_logp = (token_logprobs(reference, batch.ids, batch.labels, kernels=cfg.model.kernels,
                                       temperature=t_score)
                        if reference is not None else old_logp)
        kl_tok = kl_k1(old_logp, ref_logp) * mask
        seq_kl = kl_tok.sum(-1)  # (N,) k1 estimate of KL(policy || ref) per response
        if ppo:
            rewards = ppo_rewards(scores, old_logp, ref_logp, mask, batch.last, kl_coef=kl_ctl.value)
            if p.whiten_rewards:
                rewards = whiten(rewards, mask, shift_mean=False)
            advantages, returns = gae(rewards, old_values, mask, gamma=p.gamma, lam=p.lam)
            advantages = whiten(advantages, mask)
        else:
            advantages = group_advantages(scores, G, kind=cfg.task)[:, None] * mask
            returns = None

        stats: dict[str, list[float]] = {"clip_frac": [], "approx_kl": [], "entropy": [], "value_loss": [],
                                         "grad_norm": [], "loss": []}
        mb_size = math.ceil(N / p.minibatches)
        for _ in range(p.ppo_epochs):
            order = torch.randperm(N, generator=gen)
            for s in range(0, N, mb_size):
                rows = order[s:s + mb_size].to(device)
                mb = batch.select(rows)
                T = mb.ids.shape[1]
                m = mb.mask
                with autocast:
                    logp, values, ent = trainable.score(mb, kernels=cfg.model.kernels,
                                                        entropy="grad" if p.entropy_coef > 0 else True)
                    loss, st = policy_loss(logp, old_logp[rows, :T], advantages[rows, :T], m, clip=p.clip)
                    if ppo:
                        vl, _ = value_loss(values, old_values[rows, :T], returns[rows, :T], m, clip=p.value_clip)
                        loss = loss + p.vf_coef * vl
                        stats["value_loss"].append(float(vl.detach()))
                    elif reference is not None and p.kl_coef > 0:
                        loss = loss + p.kl_coef * masked_mean(kl_k3(logp, ref_logp[rows, :T]), m)
                    ent_mean = masked_mean(ent, m)
                    if p.entropy_coef > 0:
                        loss = loss - p.entropy_coef * ent_mean
                loss.backward()
                grad_norm = _grad_norm(trainable, cfg.optim.grad_clip)
                if math.isfinite(float(loss.detach())) and math.isfinite(grad_norm):
                    optimizer.step()
                    loop["bad_run"] = 0
                else:
                    loop["skipped"] += 1
                    loop["bad_run"] += 1
                    logger.message(f"step {step + 1}: non-finite loss/grad norm: minibatch update skipped")
                    if loop["bad_run"] >= cfg.max_bad_steps:
                        logger.close()
                        raise RuntimeError(f"stopping: {loop['bad_run']} non-finite updates in a row at step "
                                           f"{step + 1}; last checkpoint: {result.checkpoint}. Lower optim.lr.")
                optimizer.zero_grad(set_to_none=True)
                for k, v in (("clip_frac", st["clip_frac"]), ("approx_kl", st["approx_kl"]),
                             ("entropy", ent_mean.detach()), ("grad_norm", grad_norm), ("loss", loss.detach())):
                    stats[k].append(float(v))
        if ppo:
            kl_ctl.update(float(seq_kl.mean()), n_steps=N)
        step += 1
        loop["step"] = step
        last_sample = sample_line(prompts[0], responses[0])

        # -- logging
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
            n_tokens = float(mask.sum())
            logger.log(step, **{"reward/mean": float(scores.mean()), "reward/std": float(scores.std(correction=0)),
                                "kl": float(seq_kl.mean()), "entropy": mean(stats["entropy"]),
                                "clip_frac": mean(stats["clip_frac"]), "approx_kl": mean(stats["approx_kl"]),
                                "response_len": n_tokens / N, "value_loss": mean(stats["value_loss"]),
                                "train/loss": mean(stats["loss"]), "grad_norm": mean(stats["grad_norm"]),
                                "kl_coef": kl_ctl.value if use_ref else 0.0, "lr": lr,
                                "rollout_s": t_roll, "step_s": time.time() - t0,
                                "tokens_per_s": n_tokens / max(t_roll, 1e-9)})

    result.step, result.skipped = step, loop["skipped"]
    logger.close()
    if cfg.plot:
        plot_losses(os.path.join(run_dir, "metrics.jsonl"), os.path.join(run_dir, "loss.png"))
    if result.stopped != "sigterm":  # (fastlm-train says how to continue a stopped run)
        say(f"done: {step} steps in {time.time() - t_start:.1f}s")
    return result
