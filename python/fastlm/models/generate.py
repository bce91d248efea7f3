"""Autoregressive generation from a `GPT`: a preallocated KV cache, top-k/top-p/temperature
sampling (the same filtering as transformers' logits warpers), streaming ids and UTF-8-safe text.

Context policy. The model sees at most ``max_seq_len`` tokens. A prompt longer than that keeps
only its last ``keep = max_seq_len - max_seq_len // 4`` tokens (a warning says so). When the
context would pass ``max_seq_len`` tokens during generation, it *slides*: the cache is rebuilt from
the last ``keep`` tokens at positions 0.. (one prefill per max_seq_len // 4 new tokens), the
cropped window a model without a cache would see. `generate` never stops because of the context
length; it stops after ``max_new_tokens`` ids or at ``eos_id``.
"""
from __future__ import annotations

import codecs
import numbers
import operator
import warnings
from typing import Iterable, Iterator, Optional, Sequence

import torch

from fastlm.models.config import GPTConfig
from fastlm.models.layers import is_integer_dtype

class _LayerView:
    """One layer's slice of a `KVCache`, as `Attention.forward` uses it."""

    def __init__(self, cache: "KVCache", i: int):
        self.cache, self.i = cache, i

    def update(self, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (B, Hkv, T, hd) at the cache position; return all keys/values so far and
        the attention mask (None when the cache was empty: plain causal attention)."""
        return self.cache._update(self.i, k, v)


class KVCache:
    """Preallocated keys/values for every layer: (n_layer, B, Hkv, max_len, hd) each, allocated
    on the first write with the keys' dtype and device (so bf16 autocast gives a bf16 cache).

    >>> import torch
    >>> from fastlm.models import GPT, GPTConfig
    >>> model = GPT(GPTConfig.named("tiny", vocab_size=64)).eval()
    >>> cache = KVCache(max_len=16)
    >>> with torch.no_grad():
    ...     a = model(torch.tensor([[1, 2, 3]]), kv_cache=cache)[:, -1]
    ...     b = model(torch.tensor([[4]]), kv_cache=cache)[:, -1]
    >>> cache.pos
    4
    >>> full = model(torch.tensor([[1, 2, 3, 4]]))[:, -1]
    >>> torch.allclose(b, full, atol=1e-5)
    True
    """

    def __init__(self, max_len: int):
        if max_len <= 0:
            raise ValueError(f"KVCache max_len must be > 0, got {max_len}")
        self.max_len = max_len
        self.pos = 0           # tokens cached so far (same for every row of the batch)
        self.k: Optional[torch.Tensor] = None
        self.v: Optional[torch.Tensor] = None
        self._mask: Optional[torch.Tensor] = None  # (1, 1, T, pos+T) for the current call

    def reset(self) -> None:
        """Forget the cached tokens (the buffers are kept)."""
        self.pos = 0

    def check(self, batch: int, T: int, n_layer: int) -> None:
        """Refuse a call that would overflow the cache or change the batch size."""
        if self.pos + T > self.max_len:
            raise ValueError(f"KV cache full: {self.pos} cached + {T} new tokens > max_len "
                             f"{self.max_len}")
        if self.k is not None and (self.k.shape[0] != n_layer or self.k.shape[1] != batch):
            if self.pos:
                raise ValueError(f"KV cache holds batch {self.k.shape[1]} x {self.k.shape[0]} "
                                 f"layers, got batch {batch} x {n_layer} layers")
            self.k = self.v = None  # empty cache: reallocate for the new shape
        self._n_layer, self._mask = n_layer, None

    def layer(self, i: int) -> _LayerView:
        return _LayerView(self, i)

    def advance(self, T: int) -> None:
        self.pos += T
        self._mask = None

    def _update(self, i: int, k: torch.Tensor, v: torch.Tensor):
        B, H, T, hd = k.shape
        if self.k is None or self.k.dtype != k.dtype or self.k.device != k.device:
            if self.pos:
                raise ValueError("KV cache dtype/device changed between calls")
            shape = (self._n_layer, B, H, self.max_len, hd)
            self.k = torch.empty(shape, dtype=k.dtype, device=k.device)
            self.v = torch.empty(shape, dtype=v.dtype, device=v.device)
        p = self.pos
        self.k[i, :, :, p:p + T] = k
        self.v[i, :, :, p:p + T] = v
        if p == 0:
            return k, v, None  # nothing cached before: the caller's causal attention is exact
        if self._mask is None:  # query t (position p+t) sees keys 0..p+t; shared by all layers
            q_pos = torch.arange(p, p + T, device=k.device)[:, None]
            self._mask = (torch.arange(p + T, device=k.device)[None, :] <= q_pos)[None, None]
        return self.k[i, :, :, :p + T], self.v[i, :, :, :p + T], self._mask


def top_k_filter(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Logits outside the ``top_k`` largest set to -inf (ties with the k-th kept); 0 = off.
    Same rule as transformers' TopKLogitsWarper.

    >>> top_k_filter(torch.tensor([[1.0, 3.0, 2.0]]), 2)
    tensor([[-inf, 3., 2.]])
    """
    if top_k <= 0:
        return logits
    k = min(int(top_k), logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probability reaches
    ``top_p`` (at least one); 1.0 = off. Same rule as transformers' TopPLogitsWarper.

    >>> top_p_filter(torch.tensor([[0.0, 2.0, 1.0]]), 0.6)
    tensor([[-inf, 2., -inf]])
    """
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=False)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cum <= (1.0 - top_p)
    remove[..., -1:] = False  # the most likely token always stays
    return logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))


def _is_int(x) -> bool:
    """An integer (Python, NumPy, a 0-d integer tensor), not a bool: 2.0, True or "2" would be taken
    silently or fail deep inside torch."""
    if isinstance(x, bool) or (torch.is_tensor(x) and x.dtype == torch.bool):
        return False
    try:
        operator.index(x)
    except TypeError:
        return False
    return True


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_sampling(temperature: float, top_k: int, top_p: float) -> None:
    for name, value, ok, kind in (("temperature", temperature, _is_real, "a number"),
                                  ("top_k", top_k, _is_int, "an integer"),
                                  ("top_p", top_p, _is_real, "a number")):
        if not ok(value):
            raise ValueError(f"{name} must be {kind}, got {value!r}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")


def process_logits(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int = 0,
                   top_p: float = 1.0) -> torch.Tensor:
    """fp32 logits / temperature, then top-k, then top-p (transformers' warper order);
    filtered entries are -inf. ``temperature`` must be > 0 here (0 = greedy is `sample_next`'s).

    >>> process_logits(torch.tensor([[2.0, 4.0, 0.0]]), temperature=2.0, top_k=2)
    tensor([[1., 2., -inf]])
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 to scale logits, got {temperature}")
    _check_sampling(temperature, top_k, top_p)
    return top_p_filter(top_k_filter(logits.float() / temperature, top_k), top_p)


def sample_next(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int = 0,
                top_p: float = 1.0, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(B, V) logits -> (B,) next ids: argmax when ``temperature`` is 0, else a draw from
    softmax(`process_logits`). The draw happens on the CPU with ``generator`` (a CPU
    generator), so a seed gives the same ids on any device.

    >>> sample_next(torch.tensor([[0.0, 5.0, 1.0]]), temperature=0.0)
    tensor([1])
    """
    _check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = process_logits(logits, temperature=temperature, top_k=top_k,
                           top_p=top_p).softmax(dim=-1).cpu()
    if not torch.isfinite(probs).all():  # torch.multinomial's own error names neither cause
        bad = torch.isnan(logits).any() or torch.isposinf(logits).any()
        if not bad and torch.isfinite(logits).any(dim=-1).all():
            raise ValueError(f"temperature {temperature} is too small: logits / temperature overflow "
                             "float32; use temperature=0 for greedy decoding")
        raise ValueError("logits hold NaN or +inf, or are -inf for every token: nothing to sample from")
    return torch.multinomial(probs, 1, generator=generator)[:, 0].to(logits.device)


def _check_prompt(prompt_ids, vocab_size: int) -> list[int]:
    if isinstance(prompt_ids, (str, bytes)) or not (torch.is_tensor(prompt_ids) or
                                                    hasattr(prompt_ids, "__iter__")):
        raise ValueError(f"prompt_ids must be a list or 1-D tensor of token ids, got "
                         f"{type(prompt_ids).__name__}")
    if torch.is_tensor(prompt_ids) and (prompt_ids.dim() != 1 or not is_integer_dtype(prompt_ids.dtype)):
        raise ValueError(f"prompt_ids must be a 1-D integer tensor, got {prompt_ids.dtype} of shape "
                         f"{tuple(prompt_ids.shape)}")
    raw = prompt_ids.tolist() if torch.is_tensor(prompt_ids) else list(prompt_ids)
    bad = [t for t in raw if not isinstance(t, numbers.Integral) or isinstance(t, bool)]
    if bad:  # int(1.5) would silently become 1
        raise ValueError(f"prompt_ids must be integer token ids, got {bad[0]!r}")
    ids = [int(t) for t in raw]
    if not ids:
        raise ValueError("prompt_ids is empty: pass at least one token (e.g. the tokenizer's "
                         "<|bos|> id)")
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"prompt id {bad[0]} is outside the model's vocabulary [0, {vocab_size})")
    return ids


@torch.no_grad()
def generate(model, prompt_ids: Sequence[int], *, max_new_tokens: int, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, eos_id: Optional[int] = None,
             generator: Optional[torch.Generator] = None, kernels: str = "fastlm",
             use_cache: bool = True) -> Iterator[int]:
    """Stream up to ``max_new_tokens`` ids continuing ``prompt_ids`` (a list or 1-D tensor)
    from a causal `GPT`. temperature 0 = greedy; ``top_k`` 0 and ``top_p`` 1.0 are off;
    ``eos_id`` stops after that id is yielded; ``generator``: a seeded CPU torch.Generator for
    reproducible sampling. ``use_cache=False`` recomputes the whole window each step (the
    reference the cache is tested against). Context policy: see the module docstring.

    >>> from fastlm.models import GPT, GPTConfig
    >>> model = GPT(GPTConfig.named("tiny", vocab_size=64)).eval()
    >>> ids = list(generate(model, [1, 2, 3], max_new_tokens=5, temperature=0))
    >>> len(ids)
    5
    """
    if not _is_int(max_new_tokens):  # 1.5 failed inside range(), True was taken as 1
        raise ValueError(f"max_new_tokens must be an integer, got {max_new_tokens!r}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    cfg = getattr(model, "config", None)
    if not isinstance(cfg, GPTConfig):
        raise ValueError(f"generation needs a causal LM (GPT); got {type(model).__name__} "
                         f"(a masked LM cannot generate text)")
    tokens = _check_prompt(prompt_ids, cfg.vocab_size)
    _check_sampling(temperature, top_k, top_p)
    # an eos_id the model cannot emit (1.5, -1, vocab_size) would never stop generation
    if eos_id is not None and not (_is_int(eos_id) and 0 <= eos_id < cfg.vocab_size):
        raise ValueError(f"eos_id must be None or a token id in [0, {cfg.vocab_size}), got {eos_id!r}")
    max_new_tokens, eos_id = int(max_new_tokens), None if eos_id is None else int(eos_id)
    if max_new_tokens == 0:
        return
    device = next(model.parameters()).device
    max_len = cfg.max_seq_len
    keep = max(1, max_len - max_len // 4)  # tokens kept when the window slides
    if len(tokens) > max_len:
        warnings.warn(f"prompt has {len(tokens)} tokens > max_seq_len {max_len}: keeping the "
                      f"last {keep}", stacklevel=2)
    was_training = model.training
    model.eval()
    try:
        cache = KVCache(max_len) if use_cache else None
        window = tokens[-keep:] if len(tokens) > max_len else list(tokens)  # what the model sees
        fresh = window  # tokens not yet in the cache
        for _ in range(max_new_tokens):
            if cache is None:
                x = torch.tensor([window], dtype=torch.long, device=device)
                h = model.hidden_states(x, kernels=kernels)[:, -1]
            else:
                x = torch.tensor([fresh], dtype=torch.long, device=device)
                h = model.hidden_states(x, kernels=kernels, kv_cache=cache)[:, -1]
            logits = model.lm_head(h)
            nxt = int(sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                                  generator=generator)[0])
            yield nxt
            if eos_id is not None and nxt == eos_id:
                return
            window.append(nxt)
            fresh = [nxt]
            if len(window) > max_len:  # full: slide, rebuild the cache from the last `keep`
                window = window[-keep:]
                fresh = window
                if cache is not None:
                    cache.reset()
    finally:
        model.train(was_training)


def stream_text(tokenizer, ids: Iterable[int]) -> Iterator[str]:
    """Decode ids to text as they arrive, holding back the bytes of a UTF-8 character split
    across tokens until it is complete (invalid bytes become U+FFFD).

    >>> from fastlm.tokenizer import Tokenizer
    >>> tok = Tokenizer([bytes([b]) for b in range(256)])
    >>> list(stream_text(tok, list("é!".encode())))
    ['', 'é', '!']
    """
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for i in ids:
        yield dec.decode(tokenizer.token_bytes(int(i)))
    tail = dec.decode(b"", final=True)
    if tail:
        yield tail
