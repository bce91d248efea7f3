"""Per-token and per-sequence log-probabilities of given labels under a causal LM (DPO, RL).

Masking contract (the same as every fastlm loss): ``ids`` (B, T) are the model's inputs and ``labels``
(B, T) hold the token that should follow each position, ``labels[:, t]`` = the token after ``ids[:, t]``
(already shifted), with -100 where no log-prob is wanted (prompt, padding). The result at such
positions is exactly 0, so a plain ``.sum(-1)`` over a row is the log-probability of its response.

The log-probs come from the model's own loss path, ``model(ids, labels, reduction="none")``: with
``kernels="fastlm"`` that is the fused ``fastlm.ops.linear_cross_entropy`` (per-token -log p, the
(B*T, V) logits never held), with ``kernels="torch"`` plain ``F.cross_entropy`` on logits; negated.
Calling the module (not ``model.hidden_states``) keeps DDP/FSDP hooks and ``torch.compile`` working.
Values are float32; under bf16 autocast the head matmul runs in bf16 (the model's loss path), so they
carry bf16 logit rounding: compare log-probs computed in the same precision (policy vs reference, new vs old).
"""
from __future__ import annotations

import torch

IGNORE_INDEX = -100


def _check(ids: torch.Tensor, labels: torch.Tensor) -> None:
    if ids.dim() != 2:
        raise ValueError(f"ids must be (batch, time), got shape {tuple(ids.shape)}")
    if labels.shape != ids.shape:
        raise ValueError(f"labels {tuple(labels.shape)} must match ids {tuple(ids.shape)}")
    if ids.dtype != torch.long or labels.dtype != torch.long:
        raise ValueError(f"ids and labels must be int64, got {ids.dtype} and {labels.dtype}")


def token_logprobs(model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor, *,
                   kernels: str = "fastlm", **forward_kwargs) -> torch.Tensor:
    """(B, T) float32 ``log p(labels[b, t] | ids[b, :t+1])``, 0 where ``labels == -100``; differentiable.
    ``forward_kwargs`` go to the model's forward (e.g. ``position_ids``).

    >>> import torch
    >>> from fastlm.models import GPT, GPTConfig
    >>> model = GPT(GPTConfig.named("tiny", vocab_size=64, n_layer=1))
    >>> ids = torch.tensor([[1, 2, 3, 4]])
    >>> labels = torch.tensor([[-100, 3, 4, -100]])  # log p of tokens 3 and 4 only
    >>> lp = token_logprobs(model, ids, labels).detach()
    >>> lp.shape, lp.dtype, float(lp[0, 0]), bool((lp[0, 1:3] < 0).all())
    (torch.Size([1, 4]), torch.float32, 0.0, True)
    """
    _check(ids, labels)
    nll = model(ids, labels, kernels=kernels, reduction="none", **forward_kwargs)  # (B, T) -log p
    # ignored positions are 0 on both kernel paths already; the where makes it a contract (and +0.0)
    return torch.where(labels == IGNORE_INDEX, torch.zeros((), device=nll.device), -nll.float())


def sequence_logprobs(model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor, *,
                      kernels: str = "fastlm", **forward_kwargs) -> torch.Tensor:
    """(B,) float32 sums of `token_logprobs` over each row: log p(response | prompt) when ``labels``
    are -100 outside the response.

    >>> import torch
    >>> from fastlm.models import GPT, GPTConfig
    >>> model = GPT(GPTConfig.named("tiny", vocab_size=64, n_layer=1))
    >>> ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    >>> sequence_logprobs(model, ids, torch.full_like(ids, -100)).tolist()
    [0.0, 0.0]
    """
    return token_logprobs(model, ids, labels, kernels=kernels, **forward_kwargs).sum(-1)


def response_labels(ids: torch.Tensor, response_start: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Shifted labels for rows ``prompt + response (+ padding)``: ``labels[b, t] = ids[b, t + 1]`` for
    ``response_start[b] - 1 <= t < lengths[b] - 1`` (predicting the response tokens), -100 elsewhere.
    ``response_start`` (B,) is the index of the first response token, ``lengths`` (B,) the real length.

    >>> import torch
    >>> response_labels(torch.tensor([[1, 2, 3, 4, 0]]), torch.tensor([2]), torch.tensor([4])).tolist()
    [[-100, 3, 4, -100, -100]]
    """
    _check(ids, ids)
    B, T = ids.shape
    t = torch.arange(T, device=ids.device).unsqueeze(0)
    start = response_start.to(ids.device).view(B, 1)
    end = lengths.to(ids.device).view(B, 1)
    if bool((start < 1).any()) or bool((end > T).any()) or bool((start > end).any()):
        raise ValueError("need 1 <= response_start <= lengths <= T for every row (the prompt has >= 1 token)")
    nxt = torch.cat([ids[:, 1:], ids.new_full((B, 1), IGNORE_INDEX)], dim=1)
    keep = (t >= start - 1) & (t < end - 1)
    return torch.where(keep, nxt, torch.full_like(nxt, IGNORE_INDEX))
