"""Direct preference optimization (`--task dpo`): the sigmoid DPO loss and its objective for the shared loop.

Loss (Rafailov et al. 2023; TRL ``DPOTrainer`` loss_type="sigmoid", no label smoothing), per pair::

    logits = (pi_chosen - ref_chosen) - (pi_rejected - ref_rejected)
    loss   = -logsigmoid(beta * logits)

where ``pi_*``/``ref_*`` are the summed log-probs of the response tokens (prompt and padding masked
with -100; `fastlm.posttrain.logprobs`) under the policy and the frozen reference. ``post.rpo_alpha`` > 0
adds ``rpo_alpha * (-pi_chosen / chosen tokens)``, the chosen answer's per-token NLL (RPO, Pang et al. 2024;
TRL's ``rpo_alpha``): plain DPO may lower the chosen answer's likelihood along with the rejected one's
(from the default chain's SFT model, 250 default steps cut greedy exact match 0.72 -> 0.51). Implicit rewards
(TRL's logged names): ``rewards/chosen = beta * (pi_c - ref_c)``, ``rewards/rejected = beta * (pi_r -
ref_r)``, ``rewards/margin`` = their mean difference, ``rewards/accuracy`` = share of pairs with
chosen reward > rejected reward. The loop divides the summed loss by the step's pair count.

Reference = the initial policy (``post.init_from``), frozen. ``post.reference``:

- ``precompute`` (default): its log-probs are computed once, before training, for every train and val
  pair (stored on the pairs, in memory) and the reference model is then dropped. A resumed run
  recomputes them: the reference is the init_from checkpoint, so the values are the same.
- ``online``: the frozen copy stays on the device and scores each batch under no_grad (twice the
  forward cost per step, no start-up pass; for datasets too large to precompute).

Policy and reference see the same rows (chosen and rejected concatenated in one forward, TRL's
``concatenated_forward``), in eval mode for the reference (dropout off), and in the run's precision: the
precomputation and `evaluate` use the loop's bf16 autocast on GPU (``precision``), so that at step 0 the
policy's log-probs equal the precomputed ones (loss log 2, margin 0) rather than differ by rounding.
Under torchrun each rank precomputes a strided share, then one all-reduce gives every rank all values.
Cost on a CPU: a forward per pair (the default tiny model, 2 shared cores: ~12 ms/pair at batch 64, so
~2.5 min for the 12.6k built-in pairs); on a GPU it is seconds. ``online`` skips it.
"""
from __future__ import annotations

import contextlib
import copy
import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from fastlm.models import GPT, RewardModel, config_to_dict
from fastlm.posttrain.logprobs import sequence_logprobs
from fastlm.posttrain.objective import Objective, load_init
from fastlm.posttrain.pairs import Pair, PairStream, collate_pairs, load_preference_data
from fastlm.train.config import TrainConfig
from fastlm.train.distributed import DistInfo, all_reduce_sum


def dpo_loss(pi_chosen: torch.Tensor, pi_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, *, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(losses, chosen_rewards, rejected_rewards)``, each (B,): the sigmoid DPO loss per pair and the
    detached implicit rewards ``beta * (pi - ref)``.

    >>> import torch
    >>> z = torch.zeros(1)
    >>> dpo_loss(z, z, z, z, beta=0.1)[0].tolist()  # log 2 at the start (policy == reference)
    [0.6931471824645996]
    """
    if not (pi_chosen.shape == pi_rejected.shape == ref_chosen.shape == ref_rejected.shape):
        raise ValueError("dpo_loss: the four log-prob tensors must have one shape")
    logits = (pi_chosen - ref_chosen) - (pi_rejected - ref_rejected)
    losses = -F.logsigmoid(beta * logits)
    return losses, beta * (pi_chosen - ref_chosen).detach(), beta * (pi_rejected - ref_rejected).detach()


def pair_logprobs(model: torch.nn.Module, batch: dict, *, kernels: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logp_chosen, logp_rejected)`` (B,) summed response log-probs of a `collate_pairs` batch."""
    lp = sequence_logprobs(model, batch["input_ids"], batch["labels"], kernels=kernels)
    B = lp.shape[0] // 2
    return lp[:B], lp[B:]


def chosen_tokens(batch: dict) -> torch.Tensor:
    """(B,) response tokens of each pair's chosen row (>= 1) in a `collate_pairs` batch."""
    labels = batch["labels"]
    return (labels[: labels.shape[0] // 2] != -100).sum(-1).clamp(min=1)


def run_autocast(cfg: TrainConfig, device: torch.device):
    """The training loop's autocast context: bf16 on GPU under precision auto/bf16, else none."""
    precision = ("bf16" if device.type == "cuda" else "fp32") if cfg.precision == "auto" else cfg.precision
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


@torch.no_grad()
def precompute_reference(ref: torch.nn.Module, pairs: list[Pair], *, device: torch.device, kernels: str,
                         batch: int = 64, autocast=None, info: Optional[DistInfo] = None) -> None:
    """Set ``pair.ref = (logp_chosen, logp_rejected)`` under ``ref`` for every pair (in place). Under torchrun
    (``info``) each rank scores a strided share and the values are summed over ranks (one all-reduce).

    >>> # precompute_reference(frozen_policy, train_pairs, device=torch.device("cpu"), kernels="fastlm")
    """
    info = info or DistInfo()
    was = ref.training
    ref.eval()
    mine = list(range(info.rank, len(pairs), info.world_size))
    values = [0.0] * (2 * len(pairs))  # chosen, rejected per pair; 0 where another rank scores it
    for i in range(0, len(mine), batch):
        idx = mine[i:i + batch]
        b = {k: v.to(device) for k, v in collate_pairs([pairs[j] for j in idx]).items()}
        with autocast if autocast is not None else contextlib.nullcontext():
            lc, lr = pair_logprobs(ref, b, kernels=kernels)
        for j, c, r in zip(idx, lc.tolist(), lr.tolist()):
            values[2 * j], values[2 * j + 1] = c, r
    values = all_reduce_sum(values, info)
    for j, p in enumerate(pairs):
        p.ref = (values[2 * j], values[2 * j + 1])
    ref.train(was)


class DPOObjective(Objective):
    """The dpo task for the shared loop (see `fastlm.posttrain.objective`); units are pairs."""

    def __init__(self, cfg: TrainConfig, info: DistInfo, *, run_dir: str, log: Callable[[str], None] = print):
        self.cfg, self.info = cfg, info
        init = load_init(cfg, tokenizer_dir=run_dir)
        if not isinstance(init.model, GPT) or isinstance(init.model, RewardModel):
            raise ValueError(f"post.init_from={init.source}: DPO trains a causal LM policy (an SFT model), "
                             f"got a {type(init.model).__name__}")
        self.model, self.model_config = init.model, config_to_dict(init.model.config)
        self.tokenizer, self.tokenizer_path, self.init_from = init.tokenizer, init.tokenizer_path, init.source
        self.seq_len = min(cfg.data.seq_len, self.model.config.max_seq_len)
        self.train_pairs, self.val_pairs, self.summary = load_preference_data(
            cfg, self.tokenizer, seq_len=self.seq_len, log=log)
        self.stream = PairStream(self.train_pairs, seed=cfg.seed, rank=info.rank, world=info.world_size)
        self.kernels = cfg.model.kernels
        ref = copy.deepcopy(self.model).eval().requires_grad_(False)
        if cfg.post.reference == "precompute":
            t0 = time.time()
            ref.to(info.device)
            precompute_reference(ref, self.train_pairs + self.val_pairs, device=info.device, kernels=self.kernels,
                                 batch=max(cfg.micro_batch, 64), autocast=run_autocast(cfg, info.device), info=info)
            self.ref: Optional[torch.nn.Module] = None
            log(f"dpo: reference log-probs of {len(self.train_pairs) + len(self.val_pairs)} pairs precomputed "
                f"in {time.time() - t0:.1f}s (beta {cfg.post.beta})")
        else:
            self.ref = ref
            log(f"dpo: reference scored online each step (beta {cfg.post.beta})")

    def next_micro(self, n_global: int) -> dict:
        pairs = self.stream.next_micro(n_global)
        batch = collate_pairs(pairs)
        if self.ref is None:
            batch["ref"] = torch.tensor([p.ref for p in pairs], dtype=torch.float32)  # (B, 2)
        return batch

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)

    def tokens(self, batch: dict) -> int:
        return int(batch["lengths"].sum())

    def _reference(self, batch: dict, kernels: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self.ref is None:
            return batch["ref"][:, 0], batch["ref"][:, 1]
        device = batch["input_ids"].device
        if next(self.ref.parameters()).device != device:
            self.ref.to(device)
        with torch.no_grad():
            return pair_logprobs(self.ref, batch, kernels=kernels)

    def loss(self, model, batch, *, kernels: str):
        ref_c, ref_r = self._reference(batch, kernels)
        pi_c, pi_r = pair_logprobs(model, batch, kernels=kernels)
        losses, rc, rr = dpo_loss(pi_c, pi_r, ref_c, ref_r, beta=self.cfg.post.beta)
        metrics = {"rewards/chosen": float(rc.sum()), "rewards/rejected": float(rr.sum()),
                   "rewards/margin": float((rc - rr).sum()), "rewards/accuracy": float((rc > rr).sum())}
        if self.cfg.post.rpo_alpha > 0:
            nll = -pi_c / chosen_tokens(batch).to(pi_c.dtype)
            losses = losses + self.cfg.post.rpo_alpha * nll
            metrics["nll/chosen"] = float(nll.detach().sum())
        return losses.sum(), float(losses.shape[0]), metrics

    @torch.no_grad()
    def evaluate(self, model) -> dict:
        if not self.val_pairs:
            return {}
        device = next(model.parameters()).device
        with run_autocast(self.cfg, device):
            r = evaluate_dpo(model, self.val_pairs, beta=self.cfg.post.beta, kernels=self.kernels,
                             batch=max(self.cfg.micro_batch, 16), ref=self.ref)
        return {f"val/{k}": v for k, v in r.items() if k != "n"}

    def sample(self, model, device, autocast=None) -> str:
        """Greedy answer to the first held-out prompt."""
        from fastlm.models.generate import generate
        from fastlm.tokenizer.chat_template import ROLE_TOKENS
        pairs = self.val_pairs or self.train_pairs
        prompt = pairs[0].chosen[:pairs[0].prompt_len]
        end = self.tokenizer.special_id(ROLE_TOKENS["assistant"][1])
        was = model.training
        model.eval()
        ids = list(generate(model, prompt, max_new_tokens=self.cfg.post.max_new_tokens, temperature=0,
                            eos_id=end, kernels=self.kernels))
        model.train(was)
        return self.tokenizer.decode(prompt[1:] + ids)


@torch.no_grad()
def evaluate_dpo(model: torch.nn.Module, pairs: list[Pair], *, beta: float,
                 kernels: str = "fastlm", batch: int = 32, ref: Optional[torch.nn.Module] = None) -> dict:
    """DPO metrics on held-out pairs (``pair.ref`` precomputed, or scored by ``ref``): mean ``loss``,
    ``rewards/chosen``, ``rewards/rejected``, ``rewards/margin``, ``rewards/accuracy``, and ``n``.
    Under torchrun every rank scores every pair (FSDP-safe, world-size free).

    >>> # evaluate_dpo(policy, val_pairs, beta=0.1)["rewards/margin"]
    """
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    sums = [0.0] * 6  # loss, chosen, rejected, margin, accuracy, n
    for i in range(0, len(pairs), batch):
        chunk = pairs[i:i + batch]
        b = {k: v.to(device) for k, v in collate_pairs(chunk).items()}
        if ref is None:
            refs = torch.tensor([p.ref for p in chunk], dtype=torch.float32, device=device)
            ref_c, ref_r = refs[:, 0], refs[:, 1]
        else:
            ref.to(device)
            ref_c, ref_r = pair_logprobs(ref, b, kernels=kernels)
        pi_c, pi_r = pair_logprobs(model, b, kernels=kernels)
        losses, rc, rr = dpo_loss(pi_c, pi_r, ref_c, ref_r, beta=beta)
        for k, v in enumerate([losses.sum(), rc.sum(), rr.sum(), (rc - rr).sum(), (rc > rr).sum()]):
            sums[k] += float(v)
        sums[5] += len(chunk)
    model.train(was)
    n = max(sums[5], 1.0)
    return {"loss": sums[0] / n, "rewards/chosen": sums[1] / n, "rewards/rejected": sums[2] / n,
            "rewards/margin": sums[3] / n, "rewards/accuracy": sums[4] / n, "n": int(sums[5])}
