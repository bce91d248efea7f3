"""Process group, device and model wrapping for single-process and ``torchrun`` training (DDP or FSDP).

One process: no process group, rank 0 of 1. Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set): NCCL on GPU,
gloo on CPU; the model is wrapped in DDP (default) or FSDP (FSDP2 ``fully_shard`` per block + root where
torch has it, else FSDP1). Model and optimizer state go through ``torch.distributed.checkpoint.state_dict``
as full, CPU, parameter-name-keyed dicts, so a checkpoint written under one world size loads under any.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass
class DistInfo:
    """Where this process stands."""
    rank: int = 0              # global rank
    local_rank: int = 0        # rank on this machine (picks the GPU)
    world_size: int = 1        # processes in the group
    device: torch.device = torch.device("cpu")  # this rank's device
    distributed: bool = False  # a process group is up (launched by torchrun)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> this rank's GPU when CUDA is available, else the CPU; other names as given.

    >>> pick_device("cpu")
    device(type='cpu')
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r} but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"device={name!r}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
        torch.cuda.set_device(device)
    return device


def init_distributed(device: str = "auto") -> DistInfo:
    """Start the process group when launched by ``torchrun`` (env ``WORLD_SIZE`` > 1); pick the device.

    >>> init_distributed("cpu").world_size  # not under torchrun
    1
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world <= 1:
        return DistInfo(device=dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank=dist.get_rank(), local_rank=local_rank, world_size=dist.get_world_size(), device=dev,
                    distributed=True)


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op in one process)."""
    if info.distributed:
        dist.barrier()


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum floats over ranks (float64 on this rank's device); the values themselves in one process.

    >>> all_reduce_sum([1.0, 2.0], DistInfo())
    [1.0, 2.0]
    """
    if not info.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_object(obj, info: DistInfo):
    """Rank 0's ``obj`` on every rank (pickled; small objects only)."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def cleanup(info: DistInfo) -> None:
    """Tear the process group down (after the last collective). Unreachable DDP/FSDP wrappers (module
    graphs are cyclic) still hold the group: collect them first, so the group and its threads go now,
    while the interpreter is whole, not at exit (gloo's threads then abort the process now and then)."""
    if info.distributed and dist.is_initialized():
        import gc
        gc.collect()
        dist.destroy_process_group()


def wrap_model(model: nn.Module, info: DistInfo, mode: str = "auto") -> nn.Module:
    """The model as trained: itself in one process, DDP or FSDP under torchrun (``mode`` auto = ddp).
    FSDP2 shards in place (``model`` becomes the FSDP module and is returned as is)."""
    if not info.distributed:
        return model
    if mode in ("auto", "ddp"):
        from torch.nn.parallel import DistributedDataParallel as DDP
        return DDP(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    if mode != "fsdp":
        raise ValueError(f"distributed must be 'auto', 'ddp' or 'fsdp', got {mode!r}")
    try:
        from torch.distributed.fsdp import fully_shard  # FSDP2 (torch >= 2.6)
    except ImportError:
        fully_shard = None
    if fully_shard is not None:
        from torch.distributed.device_mesh import init_device_mesh
        mesh = init_device_mesh(info.device.type, (info.world_size,))
        for block in getattr(model, "blocks", []):
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP  # FSDP1 fallback
    return FSDP(model, device_id=info.device if info.device.type == "cuda" else None, use_orig_params=True)


def unwrap(model: nn.Module) -> nn.Module:
    """The module under a DDP/FSDP1/torch.compile wrapper (FSDP2 modules are their own)."""
    for _ in range(3):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            break
        model = inner
    return model


@contextlib.contextmanager
def no_grad_sync(model: nn.Module, active: bool) -> Iterator[None]:
    """Skip the gradient all-reduce of a micro-step that is not the last of its step (DDP, FSDP)."""
    if not active:
        yield
        return
    if hasattr(model, "no_sync"):  # DDP, FSDP1
        with model.no_sync():
            yield
        return
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
        return
    yield


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)


def full_state(model: nn.Module, optimizer: Optional[torch.optim.Optimizer]) -> tuple[dict, dict]:
    """``(model_state, optimizer_state)``: full, on the CPU, keyed by parameter name (a collective: call on
    every rank)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict
    target = unwrap_compiled(model)
    if optimizer is None:
        return get_model_state_dict(target, options=_options()), {}
    return get_state_dict(target, optimizer, options=_options())


def load_full_state(model: nn.Module, optimizer: Optional[torch.optim.Optimizer], model_state: dict,
                    optimizer_state: Optional[dict]) -> None:
    """Load ``full_state`` dicts into a (possibly wrapped/sharded) model and its optimizer, on every rank."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict
    target = unwrap_compiled(model)
    if optimizer is None or not optimizer_state:
        set_model_state_dict(target, model_state, options=_options(strict=True))
        return
    set_state_dict(target, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state,
                   options=_options(strict=True))


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The module under ``torch.compile`` only (DDP/FSDP kept: the state-dict API understands them)."""
    return getattr(model, "_orig_mod", model)
