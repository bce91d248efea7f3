"""Reward modelling (`--task reward`): the pairwise loss, its objective for the shared loop, and scoring.

Loss (TRL ``RewardTrainer``, Bradley-Terry with InstructGPT's margin option), per pair::

    loss = -logsigmoid(r_chosen - r_rejected - margin) + center_rewards * (r_chosen + r_rejected) ** 2

summed over pairs and divided by the step's pair count by the loop (TRL: the mean over the batch, and
the mean of the centering term: the same number). ``post.margin`` is one scalar for every pair.
Accuracy = share of pairs with r_chosen > r_rejected (ties count as wrong); margin = mean r_chosen - r_rejected.

The model is `fastlm.models.reward.RewardModel`: the ``post.init_from`` model's body (an SFT model by
default) with a fresh scalar head; a reward checkpoint as init_from continues training it. Data: see
`fastlm.posttrain.pairs` (chosen and rejected rows in one forward; the reward is read at each row's
last real token, ``<|assistant_end|>``).

For RL: ``load_reward_model(path) -> (RewardModel, Tokenizer)`` and ``score(model, tokenizer, prompts,
responses)`` (renders each exchange with the chat template, response + ``<|assistant_end|>``, as in
training) or ``score_ids`` on token rows.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence, Union

import torch
import torch.nn.functional as F

from fastlm.models.config import config_to_dict
from fastlm.models.gpt import GPT
from fastlm.models.reward import RewardModel
from fastlm.posttrain.objective import Objective, load_init
from fastlm.posttrain.pairs import PairStream, collate_pairs, load_preference_data
from fastlm.train.config import TrainConfig
from fastlm.train.distributed import DistInfo


def reward_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, *, margin: Union[float, torch.Tensor] = 0.0,
                center_rewards: float = 0.0) -> torch.Tensor:
    """Per-pair loss (B,): ``-logsigmoid(r_c - r_r - margin) + center_rewards * (r_c + r_r)^2``.

    >>> import torch
    >>> reward_loss(torch.tensor([1.0]), torch.tensor([1.0])).tolist()  # log 2
    [0.6931471824645996]
    """
    if r_chosen.shape != r_rejected.shape:
        raise ValueError(f"r_chosen {tuple(r_chosen.shape)} and r_rejected {tuple(r_rejected.shape)} differ")
    loss = -F.logsigmoid(r_chosen - r_rejected - margin)
    if center_rewards:
        loss = loss + center_rewards * (r_chosen + r_rejected) ** 2
    return loss


def pair_rewards(model: torch.nn.Module, batch: dict, *, kernels: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(r_chosen, r_rejected)`` of a `collate_pairs` batch: one forward over its 2B rows."""
    r = model(batch["input_ids"], lengths=batch["lengths"], kernels=kernels)
    B = r.shape[0] // 2
    return r[:B], r[B:]


class RewardObjective(Objective):
    """The reward task for the shared loop (see `fastlm.posttrain.objective`); units are pairs."""

    def __init__(self, cfg: TrainConfig, info: DistInfo, *, run_dir: str, log: Callable[[str], None] = print):
        self.cfg, self.info = cfg, info
        init = load_init(cfg, tokenizer_dir=run_dir)
        torch.manual_seed(cfg.seed)  # the head's init, same on every rank
        if not isinstance(init.model, GPT):
            raise ValueError(f"post.init_from={init.source}: a reward model needs a causal LM (GPT) body, "
                             f"got {type(init.model).__name__}")
        self.model = init.model if isinstance(init.model, RewardModel) else RewardModel.from_gpt(init.model)
        self.model.train()
        self.model_config = config_to_dict(self.model.config)  # kind "reward"
        self.tokenizer, self.tokenizer_path, self.init_from = init.tokenizer, init.tokenizer_path, init.source
        self.seq_len = min(cfg.data.seq_len, self.model.config.max_seq_len)
        self.train_pairs, self.val_pairs, self.summary = load_preference_data(
            cfg, self.tokenizer, seq_len=self.seq_len, log=log)
        self.stream = PairStream(self.train_pairs, seed=cfg.seed, rank=info.rank, world=info.world_size)
        log(f"reward model: {type(init.model).__name__} from {init.source or 'a fresh model'} + scalar head; "
            f"margin {cfg.post.margin}, center_rewards {cfg.post.center_rewards}")

    def next_micro(self, n_global: int) -> dict:
        return collate_pairs(self.stream.next_micro(n_global))

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)

    def tokens(self, batch: dict) -> int:
        return int(batch["lengths"].sum())

    def loss(self, model, batch, *, kernels: str):
        rc, rr = pair_rewards(model, batch, kernels=kernels)
        p = self.cfg.post
        losses = reward_loss(rc, rr, margin=p.margin, center_rewards=p.center_rewards)
        rc, rr = rc.detach(), rr.detach()
        return losses.sum(), float(rc.shape[0]), {"train/accuracy": float((rc > rr).sum()),
                                                  "train/margin": float((rc - rr).sum())}

    @torch.no_grad()
    def evaluate(self, model) -> dict:
        if not self.val_pairs:
            return {}
        r = evaluate_pairs(model, self.val_pairs, batch=self.cfg.micro_batch, kernels=self.cfg.model.kernels,
                           margin=self.cfg.post.margin, center_rewards=self.cfg.post.center_rewards)
        return {"val/loss": r["loss"], "val/accuracy": r["accuracy"], "val/margin": r["margin"]}


@torch.no_grad()
def evaluate_pairs(model: torch.nn.Module, pairs: list, *, batch: int = 32,
                   kernels: str = "fastlm", margin: float = 0.0, center_rewards: float = 0.0) -> dict:
    """Reward-model metrics on held-out pairs: mean ``loss``, ``accuracy`` (r_c > r_r), ``margin`` (mean
    r_c - r_r), ``n``. Under torchrun every rank scores every pair (the same forwards on every rank: safe
    under FSDP, whose forwards are collectives, and free of the world size).

    >>> # evaluate_pairs(rm, val_pairs)["accuracy"]
    """
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    sums = [0.0, 0.0, 0.0, 0.0]  # loss, correct, margin, n
    for i in range(0, len(pairs), batch):
        b = {k: v.to(device) for k, v in collate_pairs(pairs[i:i + batch]).items()}
        rc, rr = pair_rewards(model, b, kernels=kernels)
        sums[0] += float(reward_loss(rc, rr, margin=margin, center_rewards=center_rewards).sum())
        sums[1] += float((rc > rr).sum())
        sums[2] += float((rc - rr).sum())
        sums[3] += rc.shape[0]
    model.train(was)
    loss, correct, margin_sum, n = sums
    n = max(n, 1.0)
    return {"loss": loss / n, "accuracy": correct / n, "margin": margin_sum / n, "n": int(n)}


# --------------------------------------------------------------------------------------------- scoring

def load_reward_model(path: str, *, device: str = "cpu") -> tuple[RewardModel, Any]:
    """``(RewardModel, Tokenizer)`` from a reward checkpoint or run dir (its latest checkpoint), eval mode.

    >>> # rm, tok = load_reward_model("runs/reward-tiny-...")
    """
    from fastlm.train.checkpoint import CheckpointError, load_model
    model, tok, meta = load_model(path, device=device)
    if not isinstance(model, RewardModel):
        task = meta.get("train_config", {}).get("task", "?")
        raise CheckpointError(f"{path}: not a reward model (model kind {meta['model_config'].get('kind')!r}, "
                              f"task {task!r}); train one with `fastlm-train --task reward`")
    if tok is None:
        raise CheckpointError(f"{path}: no tokenizer.fastlm in the checkpoint (needed to render responses)")
    return model, tok


@torch.no_grad()
def score_ids(model: RewardModel, sequences: Sequence[Sequence[int]], *, kernels: str = "fastlm",
              batch_size: int = 64) -> torch.Tensor:
    """(N,) float32 CPU rewards of token rows (each read at its last token). Rows longer than the model's
    ``max_seq_len`` keep their last ``max_seq_len`` tokens (the end, where the reward is read).

    >>> from fastlm.models import GPTConfig
    >>> rm = RewardModel(GPTConfig.named("tiny", vocab_size=64, n_layer=1))
    >>> score_ids(rm, [[1, 2, 3], [4, 5]]).shape
    torch.Size([2])
    """
    if not len(sequences):
        return torch.zeros(0)
    device = next(model.parameters()).device
    limit = model.config.max_seq_len
    rows = [list(s)[-limit:] for s in sequences]
    if any(not r for r in rows):
        raise ValueError("score_ids: empty sequence")
    out = []
    was = model.training
    model.eval()
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        T = max(len(r) for r in chunk)
        ids = torch.zeros(len(chunk), T, dtype=torch.long)
        for j, r in enumerate(chunk):
            ids[j, :len(r)] = torch.tensor(r)
        lengths = torch.tensor([len(r) for r in chunk])
        out.append(model(ids.to(device), lengths=lengths.to(device), kernels=kernels).float().cpu())
    model.train(was)
    return torch.cat(out)


def render_exchange(tokenizer, prompt: Any, response: str) -> list[int]:
    """Ids of ``prompt`` (a user string, or a message list) answered by ``response``, ending with
    ``<|assistant_end|>``: the layout the reward model was trained on."""
    from fastlm.data.chat import Turn, _parse_turns
    from fastlm.tokenizer.chat_template import _render
    turns = [Turn("user", prompt)] if isinstance(prompt, str) else _parse_turns(list(prompt), "prompt")
    ids, _ = _render(tokenizer, turns + [Turn("assistant", response)])
    return ids


def score(model: RewardModel, tokenizer, prompts: Sequence[Any], responses: Sequence[str], *,
          kernels: str = "fastlm", batch_size: int = 64) -> torch.Tensor:
    """(N,) float32 rewards of ``responses[i]`` to ``prompts[i]`` (user strings or message lists), rendered
    with the chat template (a response always gets its ``<|assistant_end|>``, as in training).

    >>> from fastlm.models import GPTConfig
    >>> from fastlm.tokenizer import Tokenizer
    >>> from fastlm.tokenizer.chat_template import CHAT_SPECIALS
    >>> tok = Tokenizer([bytes([b]) for b in range(256)], special_tokens={s: 256 + i for i, s in enumerate(CHAT_SPECIALS)})
    >>> rm = RewardModel(GPTConfig.named("tiny", vocab_size=tok.n_vocab, n_layer=1))
    >>> score(rm, tok, ["2+2?", "2+2?"], ["4", "5"]).shape
    torch.Size([2])
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
    rows = [render_exchange(tokenizer, p, r) for p, r in zip(prompts, responses)]
    return score_ids(model, rows, kernels=kernels, batch_size=batch_size)
