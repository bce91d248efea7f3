"""Flash attention: the CUDA kernel (fastlm._cuda) for bf16/fp16 CUDA tensors with head dim 64 or
128, PyTorch's scaled_dot_product_attention everywhere else (on CPU that is already a fused
flash attention). Registered through torch.library so torch.compile treats it as one op."""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F

from fastlm.ops import _dispatch


# Kernel version (csrc/kernels/attention.cu header; csrc/kernels/NOTES.md has every measurement).
# Unset (None) picks by head dim what an H200 measured fastest: v5 (128-row forward blocks, 128-key
# backward blocks) for D=64, v6 (v5's forward, FA2's backward partition) for D=128. 1-4 are kept
# for comparison (bench_attention.py --versions) and are tested. 7 (wgmma forward and backward)
# and 8 (7 with a pipelined forward) are sm_90a only (refused elsewhere); 9 (v6 with the query
# tiles double-buffered) runs on sm_80+. 7-9 have not run on a GPU yet. FASTLM_ATTN_VERSION
# forces one.
KERNEL_VERSION: Optional[int] = _dispatch.kernel_version("FASTLM_ATTN_VERSION", None, range(1, 10))
DEFAULT_VERSION_BY_HEAD_DIM = {64: 5, 128: 6}
# On an sm_90 GPU with this module built for sm_90a (where v7 / v8 run): the versions a GPU run
# measured faster there than the above, by head dim. Empty until one does (csrc/kernels/NOTES.md,
# "For the next GPU session"); other GPUs keep DEFAULT_VERSION_BY_HEAD_DIM.
WGMMA_VERSION_BY_HEAD_DIM: dict[int, int] = {}
# v7 / v8 only, a fallback for a GPU that reads wgmma's descriptor offsets the other way round
# (csrc/kernels/wgmma.cuh, desc_k_major): bit 0 swaps them for the K-major operands, bit 1 for the
# MN-major ones. tests/test_wgmma.py says which bit a failing GPU needs; unset: 0.
WGMMA_SWAP: int = _dispatch.kernel_version("FASTLM_WGMMA_SWAP", 0, range(4), "a bit mask")
if WGMMA_SWAP and _dispatch.cuda_module() is not None:
    _dispatch.cuda_module().set_wgmma_swap(WGMMA_SWAP)


def kernel_version_for(head_dim: int, device: Optional[torch.device] = None) -> int:
    """The attention kernel version used for `head_dim` on `device` (KERNEL_VERSION where set;
    else WGMMA_VERSION_BY_HEAD_DIM's where the device runs wgmma, else the default)."""
    if KERNEL_VERSION:
        return KERNEL_VERSION
    if head_dim in WGMMA_VERSION_BY_HEAD_DIM and device is not None and _runs_wgmma(device):
        return WGMMA_VERSION_BY_HEAD_DIM[head_dim]
    return DEFAULT_VERSION_BY_HEAD_DIM[head_dim]


@functools.lru_cache(maxsize=None)
def _runs_wgmma_on(index: int) -> bool:
    with torch.cuda.device(index):
        return bool(_dispatch.cuda_module().wgmma_supported())


def _runs_wgmma(device: torch.device) -> bool:
    """Whether attention versions 7 and 8 run on `device` (an sm_90 GPU, a build for sm_90a)."""
    if device.type != "cuda" or _dispatch.cuda_module() is None:
        return False
    return _runs_wgmma_on(device.index if device.index is not None else torch.cuda.current_device())


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    return (t.stride(0), t.stride(1), t.stride(2))


def _kernel_ready(t: torch.Tensor) -> torch.Tensor:
    """Last dim contiguous, 16-byte aligned, strides multiples of 8 elements (the kernel loads
    rows with 16-byte vectors); otherwise a contiguous copy."""
    ok = (t.stride(3) == 1 and t.data_ptr() % 16 == 0
          and all(s % 8 == 0 for s in _strides(t)))
    return t if ok else t.contiguous()


def _sizes(q, k):
    return (q.shape[0], q.shape[1], k.shape[1], q.shape[2], k.shape[2], q.shape[3])


@torch.library.custom_op("fastlm::flash_attention", mutates_args=())
def _attn_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool, scale: float,
              version: int) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v = _kernel_ready(q), _kernel_ready(k), _kernel_ready(v)
    b, h, t, d = q.shape
    o = torch.empty(b, h, t, d, dtype=q.dtype, device=q.device)
    lse = torch.empty(b, h, t, dtype=torch.float32, device=q.device)
    _dispatch.cuda_module().attention_forward(
        q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), lse.data_ptr(), _sizes(q, k),
        (_strides(q), _strides(k), _strides(v), _strides(q)), float(scale), bool(is_causal),
        _dispatch.dtype_code(q.dtype), int(version), _dispatch.stream_handle(q.device))
    return o, lse


@_attn_fwd.register_fake
def _(q, k, v, is_causal, scale, version):
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(
        q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("fastlm::flash_attention_backward", mutates_args=())
def _attn_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              o: torch.Tensor, lse: torch.Tensor, is_causal: bool, scale: float, version: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dout, q, k, v = (_kernel_ready(x) for x in (dout, q, k, v))
    o, lse = o.contiguous(), lse.contiguous()
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    dq_accum = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    delta = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    _dispatch.cuda_module().attention_backward(
        dout.data_ptr(), q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), lse.data_ptr(),
        dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), dq_accum.data_ptr(), delta.data_ptr(),
        _sizes(q, k), (_strides(q), _strides(k), _strides(v), _strides(dout)), float(scale),
        bool(is_causal), _dispatch.dtype_code(q.dtype), int(version),
        _dispatch.stream_handle(q.device))
    return dq, dk, dv


@_attn_bwd.register_fake
def _(dout, q, k, v, o, lse, is_causal, scale, version):
    return (torch.empty(q.shape, dtype=q.dtype, device=q.device),
            torch.empty(k.shape, dtype=k.dtype, device=k.device),
            torch.empty(v.shape, dtype=v.dtype, device=v.device))


def _setup_context(ctx, inputs, output):
    q, k, v, is_causal, scale, version = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse)  # lse, not the attention matrix
    ctx.is_causal, ctx.scale, ctx.version = is_causal, scale, version
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, _dlse):
    q, k, v, o, lse = ctx.saved_tensors
    dq, dk, dv = _attn_bwd(dout, q, k, v, o, lse, ctx.is_causal, ctx.scale, ctx.version)
    return dq, dk, dv, None, None, None


_attn_fwd.register_autograd(_backward, setup_context=_setup_context)


def kernel_supports(q, k, v, is_causal: bool) -> bool:
    """Whether fastlm's CUDA kernel handles these inputs (else SDPA is used)."""
    return (q.is_cuda and _dispatch.cuda_module() is not None and q.dim() == 4
            and q.dtype in (torch.bfloat16, torch.float16) and k.dtype == q.dtype
            and v.dtype == q.dtype and q.shape[-1] in (64, 128)
            and k.shape[-1] == q.shape[-1] and v.shape == k.shape
            and q.shape[0] == k.shape[0] and q.shape[0] > 0  # no batch or no heads: SDPA's empty
            and q.shape[1] > 0 and k.shape[1] > 0 and q.shape[1] % k.shape[1] == 0
            and q.shape[2] > 0 and k.shape[2] > 0
            and (not is_causal or q.shape[2] == k.shape[2]))


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attn_mask: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
              is_causal: bool = False, *, scale: Optional[float] = None,
              enable_gqa: bool = False, backend: str = "auto") -> torch.Tensor:
    """Scaled dot-product attention softmax(q k^T * scale) v: a drop-in for
    ``F.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, *,
    scale, enable_gqa)``, with the same shapes: query (..., Hq, L, E), key (..., H, S, E),
    value (..., H, S, Ev), Hq == H unless ``enable_gqa`` (then Hq % H == 0), batch dims
    broadcast. ``backend``: 'auto' (fastlm's CUDA kernel where it applies, else SDPA) or
    'torch'. The kernel takes 4-D (B, Hq, T, D) bf16 / fp16 inputs with D = 64 or 128, Ev == E
    and equal batch sizes, no mask and no dropout: every other call goes to SDPA, as does
    causal attention with L != S.

    >>> import torch
    >>> q = k = v = torch.randn(1, 2, 5, 64)
    >>> attention(q, k, v, is_causal=True).shape
    torch.Size([1, 2, 5, 64])
    """
    q, k, v = query, key, value
    if backend not in ("auto", "torch"):
        raise ValueError(f"backend must be 'auto' or 'torch', got {backend!r}")
    shapes = f"query {tuple(q.shape)}, key {tuple(k.shape)}, value {tuple(v.shape)}"
    if min(q.dim(), k.dim(), v.dim()) < 2:
        raise ValueError(f"query, key, value must be at least 2-D (..., time, head_dim), got {shapes}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"query, key, value on different devices: {q.device}, {k.device}, "
                         f"{v.device}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"query, key, value dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if not q.is_floating_point():
        raise TypeError(f"query, key, value must be floating point, got {q.dtype}")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"incompatible shapes {shapes}: query and key need the same head_dim, "
                         "key and value the same time")
    hq, hkv = (q.shape[-3], k.shape[-3]) if min(q.dim(), k.dim()) >= 3 else (1, 1)
    if hq != hkv and hkv != 1 and not (enable_gqa and hq % hkv == 0):
        raise ValueError(f"query has {hq} heads, key/value {hkv}: pass "
                         "enable_gqa=True with query heads a multiple of key/value heads")
    if not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"dropout_p must be in [0, 1], got {dropout_p}")
    if (backend == "auto" and attn_mask is None and dropout_p == 0.0
            and kernel_supports(q, k, v, is_causal)):
        s = q.shape[-1] ** -0.5 if scale is None else float(scale)
        return _attn_fwd(q, k, v, bool(is_causal), s, kernel_version_for(q.shape[-1], q.device))[0]
    kw = {"enable_gqa": True} if enable_gqa else {}
    if is_causal and attn_mask is None and scale is not None and scale <= 0:
        # torch's CPU flash kernel returns NaN for causal attention with scale <= 0 (its causal
        # -inf times the scale); the same mask given explicitly gives the right softmax
        attn_mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        is_causal = False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                          is_causal=is_causal, scale=scale, **kw)
