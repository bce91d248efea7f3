"""The math of RL post-training (PPO, GRPO, RLOO) as pure tensor functions: KL estimators, whitening, GAE,
group-relative advantages, clipped policy and value losses, the adaptive KL controller.

Layout shared by every function: per-token tensors are ``(B, T)`` float tensors aligned with a ``mask``
``(B, T)`` (bool or 0/1) that is 1 on response tokens (the actions) and 0 elsewhere (prompt, padding).
Position ``t`` holds the quantities of the action taken at ``t``: its log-prob, the value of the state
before it, its reward. Masked entries never influence a result (they may hold anything finite).

Formulas follow TRL (PPOTrainer / GRPOTrainer / RLOOTrainer) and the papers they cite: Schulman et al. 2017
(clipped PPO), Schulman et al. 2016 (GAE), Ziegler et al. 2019 (adaptive KL), Shao et al. 2024 (GRPO, k3 KL),
Ahmadian et al. 2024 (RLOO). tests/test_rl_losses.py checks each against a direct loop/definition.
"""

from __future__ import annotations

from typing import Literal

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean of ``x`` where ``mask`` is set (over all entries, or along ``dim``); 0 where nothing is set.

    >>> masked_mean(torch.tensor([1.0, 2.0, 9.0]), torch.tensor([1, 1, 0]))
    tensor(1.5000)
    """
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum().clamp(min=1.0)
    return (x * m).sum(dim) / m.sum(dim).clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, *, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over the masked entries (Bessel-corrected like TRL's ``masked_var``).

    >>> masked_var(torch.tensor([1.0, 3.0, 100.0]), torch.tensor([1, 1, 0]))
    tensor(2.)
    """
    m = mask.to(x.dtype)
    n = m.sum()
    mean = (x * m).sum() / n.clamp(min=1.0)
    var = (((x - mean) ** 2) * m).sum() / n.clamp(min=1.0)
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def whiten(x: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over the masked entries (mean added back when ``shift_mean`` is False,
    as TRL whitens rewards); masked-out entries come back as 0.

    >>> w = whiten(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1, 1, 1]))
    >>> [round(v, 3) for v in w.tolist()]
    [-1.0, 0.0, 1.0]
    """
    mean = masked_mean(x, mask)
    out = (x - mean) * torch.rsqrt(masked_var(x, mask) + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def kl_k1(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """Per-token k1 estimate of KL(policy || reference) from samples of the policy: logp - logp_ref
    (unbiased, can be negative; the PPO reward penalty of Ziegler et al.).

    >>> kl_k1(torch.tensor([-1.0]), torch.tensor([-1.5]))
    tensor([0.5000])
    """
    return logp - logp_ref


def kl_k3(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate (Schulman's "approximating KL"; GRPO's loss term): exp(r) - r - 1 with
    r = logp_ref - logp; unbiased and always >= 0.

    >>> kl_k3(torch.tensor([-1.0]), torch.tensor([-1.0]))
    tensor([0.])
    """
    r = logp_ref - logp
    return torch.exp(r) - r - 1.0


def ppo_rewards(scores: torch.Tensor, logp: torch.Tensor, logp_ref: torch.Tensor, mask: torch.Tensor,
                last: torch.Tensor, *, kl_coef: float) -> torch.Tensor:
    """Per-token PPO rewards (Ziegler et al.): -kl_coef * k1 on every action, plus the sequence ``scores``
    (B,) at each row's last action ``last`` (B,); 0 off the mask.

    >>> ppo_rewards(torch.tensor([1.0]), torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -2.0]]),
    ...             torch.tensor([[1, 1]]), torch.tensor([1]), kl_coef=0.1).tolist()
    [[-0.05000000074505806, 1.0]]
    """
    m = mask.to(logp.dtype)
    rewards = -kl_coef * kl_k1(logp, logp_ref) * m
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += scores.to(rewards.dtype)
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over each row's masked tokens: ``(advantages, returns)``, both
    (B, T), 0 where the mask is 0. The masked tokens of a row must be contiguous (one response); the
    value after the last one is 0 (the episode ends). delta_t = r_t + gamma V_{t+1} - V_t,
    A_t = delta_t + gamma lam A_{t+1}, returns = A + V.

    >>> adv, ret = gae(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.5]]), torch.tensor([[1, 1]]),
    ...                gamma=1.0, lam=1.0)
    >>> adv.tolist(), ret.tolist()
    ([[0.5, 0.5]], [[1.0, 1.0]])
    """
    m = mask.to(values.dtype)
    values = values * m
    rewards = rewards * m
    B, T = rewards.shape
    adv = torch.zeros_like(rewards)
    last = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)  # A_{t+1}
    next_value = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)  # V_{t+1} (0 past the end)
    for t in reversed(range(T)):  # T is a response length: tens of steps
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * m[:, t]
        adv[:, t] = last
        next_value = values[:, t]
    return adv, (adv + values) * m


def group_advantages(rewards: torch.Tensor, group_size: int, *, kind: Literal["grpo", "rloo"],
                     eps: float = 1e-4) -> torch.Tensor:
    """One advantage per sample from its group's rewards: ``rewards`` (N,) with the ``group_size`` samples
    of each prompt consecutive. grpo: (r - group mean) / (group std + eps) (unbiased std, as TRL);
    rloo: r - mean of the group's other samples.

    >>> group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 2, kind="rloo").tolist()
    [1.0, -1.0, 0.0, 0.0]
    """
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 to compare samples, got {group_size}")
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be (N,) with N a multiple of group_size={group_size}, "
                         f"got shape {tuple(rewards.shape)}")
    g = rewards.view(-1, group_size)
    if kind == "grpo":
        adv = (g - g.mean(dim=1, keepdim=True)) / (g.std(dim=1, keepdim=True) + eps)
    elif kind == "rloo":
        others = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
        adv = g - others
    else:
        raise ValueError(f"kind must be 'grpo' or 'rloo', got {kind!r}")
    return adv.reshape(-1)


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
                clip: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate (PPO): mean over masked tokens of max(-A ratio, -A clamp(ratio, 1-clip, 1+clip)),
    ratio = exp(logp - old_logp). Returns ``(loss, stats)`` with stats clip_frac (share of tokens where the
    clipped term is the larger) and approx_kl (mean 0.5 (logp - old_logp)^2), both detached.

    >>> loss, s = policy_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2), clip=0.2)
    >>> float(loss), float(s["clip_frac"])
    (-1.0, 0.0)
    """
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"clip_frac": masked_mean((clipped > unclipped).float(), mask),
                 "approx_kl": masked_mean(0.5 * (logp - old_logp) ** 2, mask)}
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, *,
               clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss (PPO / TRL): 0.5 mean over masked tokens of max((V - R)^2, (V_clip - R)^2) with
    V_clip = old_V + clamp(V - old_V, -clip, clip). Returns ``(loss, clip_frac)``.

    >>> loss, frac = value_loss(torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]),
    ...                         torch.tensor([[1]]), clip=0.2)
    >>> round(float(loss), 3), float(frac)
    (0.32, 1.0)
    """
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    l1, l2 = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(l1, l2), mask)
    return loss, masked_mean((l2 > l1).float(), mask).detach()


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the last dim, in fp32: logsumexp(z) - sum softmax(z) z.

    >>> round(float(entropy_from_logits(torch.zeros(4))), 4)  # log 4
    1.3863
    """
    z = logits.float()
    p = torch.softmax(z, dim=-1)
    return torch.logsumexp(z, dim=-1) - (p * z).sum(dim=-1)


class AdaptiveKLController:
    """KL coefficient that tracks a target KL (Ziegler et al. 2019, TRL's AdaptiveKLController):
    after a batch with KL ``current`` over ``n_steps`` samples, value *= 1 + clip(current / target - 1,
    -0.2, 0.2) * n_steps / horizon. With ``target`` 0 the coefficient stays fixed.

    >>> c = AdaptiveKLController(0.1, target=1.0, horizon=100)
    >>> c.update(2.0, n_steps=10); round(c.value, 4)
    0.102
    """

    def __init__(self, init: float, *, target: float = 0.0, horizon: int = 10000):
        self.value, self.target, self.horizon = float(init), float(target), int(horizon)

    def update(self, current: float, n_steps: int) -> None:
        if self.target <= 0:
            return
        error = max(-0.2, min(0.2, current / self.target - 1.0))
        self.value *= 1.0 + error * n_steps / self.horizon
