"""Loads the native kernel modules lazily and says which path an op may take (CUDA, CPU, torch)."""
from __future__ import annotations

import os
from typing import Optional


def _load_cpu():
    try:
        from fastlm import _C
    except ImportError:
        return None
    return _C if hasattr(_C, "cross_entropy_chunk") else None


def _load_cuda():
    if os.environ.get("FASTLM_DISABLE_CUDA_KERNELS") == "1":
        return None
    try:
        from fastlm import _cuda
    except ImportError:
        return None
    return _cuda


# Loaded once at import (plain globals, so torch.compile sees constants, not a cache call).
_CPU = _load_cpu()
_CUDA = _load_cuda()


def cpu_module():
    """fastlm._C, or None when the native module is not built (ops then use pure PyTorch)."""
    return _CPU


def cuda_module():
    """fastlm._cuda, or None when it was not built (no nvcc at install) or cannot load."""
    return _CUDA


def kernel_version(env: str, default: Optional[int], versions: range,
                   what: str = "kernel version") -> Optional[int]:
    """A kernel version (or other small integer setting, named by `what`) from the environment
    variable `env` (unset: `default`); anything that is not one of `versions` is refused with a
    message naming the variable."""
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) not in versions:
        raise ValueError(f"{env}={raw!r}: {what} must be one of "
                         f"{', '.join(str(v) for v in versions)}")
    return int(raw)


# dtype codes shared with csrc/cuda/module.cu (kept in one place on each side).
def dtype_code(dtype) -> int:
    import torch

    codes = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
    if dtype not in codes:
        raise TypeError(f"unsupported dtype {dtype} (expected float32, bfloat16 or float16)")
    return codes[dtype]


def stream_handle(device) -> int:
    """The raw cudaStream_t of torch's current stream on `device`, for the native launches."""
    import torch

    return torch.cuda.current_stream(device).cuda_stream
