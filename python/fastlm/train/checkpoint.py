"""Training checkpoints: atomic, self-checking directories of safetensors weights, optimizer state and a JSON.

Layout of ``<run>/checkpoints/step-00000100/``::

    model.safetensors      full (unsharded) model state dict; a tied weight is stored once
    optimizer.safetensors  every optimizer tensor as ``state/<param fqn>/<key>`` (``param_groups/<i>/<key>``
                           for a tensor lr); the rest of the optimizer state lives in state.json
    tokenizer.fastlm       the run's tokenizer: a checkpoint is self-contained
    state.json             {"format": "fastlm-checkpoint", "version": 1, "step", "model_config",
                           "train_config", "data_state", "rng", "loop", ... (the caller's meta),
                           "tied": {alias: kept key}, "optimizer": {non-tensor part},
                           "files": {name: {"sha256", "bytes"}}}

Crash safety: a checkpoint is written into ``step-N.tmp-<pid>/`` (every file fsync'ed, state.json last),
then renamed to ``step-N``. A ``step-N`` left by an earlier run is first renamed to ``step-N.old-<pid>``
and deleted only once the new one is in place; a crash between the two renames leaves the complete
``.old`` copy, which `latest_checkpoint` still finds and the next save puts back. Old checkpoints beyond
``keep_last`` are renamed to ``.tmp-*`` and then deleted, only after the new one is complete. So after a
crash at any point the complete checkpoints are either the old set or the new one; ``.tmp-*`` leftovers
are ignored by readers and removed by the next save.

The optimizer state has the name-keyed layout of ``torch.distributed.checkpoint.state_dict.get_state_dict(
model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))`` and goes back with
``set_state_dict(model, opt, model_state_dict=..., optim_state_dict=..., options=<same options>)``; both
work without a process group (plain single-process CPU runs), under DDP and under FSDP (tested with 2
gloo processes, DDP and FSDP2 ``fully_shard``, loaded back with 2 processes and with 1). Notes for callers:
only rank 0 saves (with FSDP only rank 0 holds the gathered state; `save_checkpoint` refuses other ranks);
every rank loads the files. Under DDP on CPU the state dicts alias the live parameters, so save before the
next optimizer step (`save_checkpoint` is synchronous). ``set_state_dict`` renames the keys of the dicts it
is given in place (DDP adds ``module.``): pass each loaded dict once. RNG states are per process: gather
every rank's `rng_state()` if dropout or sampling must resume bit for bit under several processes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import shutil
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

FORMAT = "fastlm-checkpoint"
VERSION = 1
MODEL_FILE, OPTIM_FILE, TOKENIZER_FILE, STATE_FILE = ("model.safetensors", "optimizer.safetensors",
                                                      "tokenizer.fastlm", "state.json")
RESERVED = ("format", "version", "step", "tied", "optimizer", "files", "saved_at")  # keys save_checkpoint writes itself
REQUIRED = ("format", "version", "step", "model_config", "files")       # keys every state.json must have
_NAME = re.compile(r"^step-(\d+)$")
_OLD = re.compile(r"^step-(\d+)\.old-\d+$")
_TIES = {"gpt": ("lm_head.weight", "tok_emb.weight"), "encoder": ("decoder.weight", "tok_emb.weight")}


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or does not fit; the message names the file."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: the state dicts (ties restored) and state.json's content as ``meta``."""
    path: str                                  # the step-XXXXXXXX directory
    meta: dict[str, Any]                       # state.json (model_config, train_config, data_state, ...)
    model_state: dict[str, torch.Tensor]       # full state dict, tied keys alias one tensor
    optimizer_state: Optional[dict[str, Any]]  # get_state_dict layout; None when not saved or not loaded

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    @property
    def tokenizer_path(self) -> Optional[str]:
        p = os.path.join(self.path, TOKENIZER_FILE)
        return p if TOKENIZER_FILE in self.meta["files"] else None


# ---------------------------------------------------------------------------------------------- saving

def save_checkpoint(ckpt_root: str, step: int, *, model_state: dict[str, torch.Tensor],
                    optimizer_state: Optional[dict[str, Any]], meta: dict[str, Any],
                    tokenizer_path: Optional[str], keep_last: int = 0) -> str:
    """Write ``<ckpt_root>/step-%08d`` atomically and return its path; keep the newest ``keep_last``
    complete checkpoints (0 = keep all). ``meta`` (JSON-safe) must hold ``model_config``.

    >>> import tempfile, torch
    >>> from fastlm.models import GPT, GPTConfig, config_to_dict
    >>> m = GPT(GPTConfig.named("tiny", vocab_size=64))
    >>> p = save_checkpoint(tempfile.mkdtemp(), 5, model_state=m.state_dict(), optimizer_state=None,
    ...                     meta={"model_config": config_to_dict(m.config)}, tokenizer_path=None)
    >>> os.path.basename(p), load_checkpoint(p).step
    ('step-00000005', 5)
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        raise ValueError(f"save_checkpoint called on rank {torch.distributed.get_rank()}: checkpoints are "
                         "written once, by rank 0 (the other ranks only take part in get_state_dict)")
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    clash = sorted(set(meta) & set(RESERVED))
    if clash:
        raise ValueError(f"meta must not set {clash}: save_checkpoint writes them")
    if "model_config" not in meta:
        raise ValueError("meta must hold 'model_config' (fastlm.models.config_to_dict(model.config))")
    _check_json(meta, "meta")
    os.makedirs(ckpt_root, exist_ok=True)
    _clean_stale(ckpt_root)

    from safetensors.torch import save_file

    final = os.path.join(ckpt_root, f"step-{step:08d}")
    tmp = f"{final}.tmp-{os.getpid()}"
    old = None
    try:
        os.makedirs(tmp)
        tensors, tied = _dedupe_ties(_plain_tensors(model_state, "model_state"), meta["model_config"])
        save_file(tensors, os.path.join(tmp, MODEL_FILE), metadata={"format": "pt"})
        opt_json = None
        if optimizer_state is not None:
            opt_tensors: dict[str, torch.Tensor] = {}
            opt_json = _encode(optimizer_state, "", opt_tensors)
            save_file(_unshare(opt_tensors), os.path.join(tmp, OPTIM_FILE))
        if tokenizer_path is not None:
            _copy_tokenizer(tokenizer_path, os.path.join(tmp, TOKENIZER_FILE))
        files = {}
        for name in sorted(os.listdir(tmp)):
            p = os.path.join(tmp, name)
            _fsync_file(p)
            files[name] = {"sha256": _sha256(p), "bytes": os.path.getsize(p)}
        state = {"format": FORMAT, "version": VERSION, "step": step, **meta, "tied": tied,
                 "optimizer": opt_json, "files": files, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with open(os.path.join(tmp, STATE_FILE), "w", encoding="utf-8") as f:
            json.dump(state, f, indent=1, default=_json_default)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if os.path.exists(final):  # left by an earlier (crashed or restarted) run: swap, then delete
            old = f"{final}.old-{os.getpid()}"
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(ckpt_root)
    except BaseException:
        if old is not None and not os.path.exists(final):
            os.replace(old, final)
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    if keep_last and keep_last > 0:
        _prune(ckpt_root, keep_last, keep=final)
    return final


def _plain_tensors(state: dict[str, Any], what: str) -> dict[str, torch.Tensor]:
    out = {}
    for k, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{what}[{k!r}] is a {type(t).__name__}, not a tensor")
        if type(t).__name__ == "DTensor" or t.is_meta:
            raise ValueError(f"{what}[{k!r}] is sharded ({type(t).__name__}): pass a full state dict "
                             "(get_state_dict(..., options=StateDictOptions(full_state_dict=True, cpu_offload=True)))")
        out[re.sub(r"^(module\.|_orig_mod\.)+", "", k)] = t.detach()  # DDP / torch.compile wrappers
    return out


def _dedupe_ties(state: dict[str, torch.Tensor], model_config: dict) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Drop keys aliasing an earlier tensor (safetensors refuses shared storage) -> (tensors, {alias: kept})."""
    seen: dict[tuple, str] = {}
    tensors: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    for k, t in state.items():
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if t.numel() and key in seen:
            tied[k] = seen[key]
            continue
        seen.setdefault(key, k)
        tensors[k] = t
    # A gathered (FSDP) state dict holds two equal copies of a tied weight: store it once all the same.
    alias, target = _TIES.get(model_config.get("kind"), (None, None))
    if (model_config.get("tie_embeddings") and alias in tensors and target in tensors
            and torch.equal(tensors[alias], tensors[target])):
        tied[alias] = target
        del tensors[alias]
    return {k: t.contiguous().cpu() for k, t in _unshare(tensors).items()}, tied


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Clone tensors sharing storage with an earlier one (views, equal aliases of non-tied weights)."""
    seen, out = set(), {}
    for k, t in tensors.items():
        ptr = (t.device, t.untyped_storage().data_ptr())
        out[k] = t.clone() if t.numel() and ptr in seen else t
        if t.numel():
            seen.add(ptr)
    return out


def _encode(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-safe copy of ``obj``: tensors moved to ``tensors`` under their '/'-joined path; tuples and
    dicts with non-str keys tagged, so that `_decode` gives back an equal structure."""
    if isinstance(obj, torch.Tensor):
        name = path.lstrip("/")
        tensors[name] = obj.detach().contiguous().cpu()
        return {"__tensor__": name}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _encode(v, f"{path}/{k}", tensors) for k, v in obj.items()}
        return {"__items__": [[_encode(k, f"{path}/{k}", {}), _encode(v, f"{path}/{k}", tensors)]
                              for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise ValueError(f"optimizer_state{path.replace('/', '.')}: cannot store a {type(obj).__name__}")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__tuple__"}:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        if set(obj) == {"__items__"}:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
        return {k: _decode(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    return obj


def _copy_tokenizer(src: str, dst: str) -> None:
    """Copy a fastlm tokenizer file as is; convert any other format (HF tokenizer.json, ...) to it."""
    from fastlm.tokenizer.formats import FORMAT_NAME, resolve_path

    src = resolve_path(src)
    if not os.path.isfile(src):
        raise ValueError(f"tokenizer_path {src!r}: no such file")
    with open(src, "rb") as f:
        first = f.readline(1 << 16)
    try:
        is_fastlm = json.loads(first).get("format") == FORMAT_NAME
    except (ValueError, AttributeError):
        is_fastlm = False
    if is_fastlm:
        shutil.copyfile(src, dst)
    else:
        from fastlm.tokenizer import Tokenizer
        Tokenizer.from_file(src).save(dst)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):  # numpy ints/floats in data or loop state
        return obj.item()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _check_json(obj: Any, where: str) -> None:
    try:
        json.dumps(obj, default=_json_default)
    except (TypeError, ValueError) as e:
        if isinstance(obj, dict):
            for k, v in obj.items():
                _check_json(v, f"{where}[{k!r}]")
        raise ValueError(f"{where} is not JSON-safe: {e}") from None


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory handles (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _clean_stale(root: str) -> None:
    """Remove ``.tmp-*`` leftovers; put back an ``.old`` copy whose swap was cut short by a crash."""
    for name in os.listdir(root):
        p = os.path.join(root, name)
        if ".tmp-" in name and name.startswith("step-"):
            shutil.rmtree(p, ignore_errors=True)
        elif _OLD.match(name):
            final = os.path.join(root, f"step-{_OLD.match(name).group(1)}")
            if _is_complete(final):
                shutil.rmtree(p, ignore_errors=True)
            elif _is_complete(p) and not os.path.exists(final):
                os.replace(p, final)


def _prune(root: str, keep_last: int, *, keep: str) -> None:
    done = sorted((int(m.group(1)), os.path.join(root, n)) for n in os.listdir(root)
                  if (m := _NAME.match(n)) and _is_complete(os.path.join(root, n)))
    others = [p for _, p in done if os.path.abspath(p) != os.path.abspath(keep)]
    for p in others[:max(0, len(others) - (keep_last - 1))]:
        gone = f"{p}.tmp-del-{os.getpid()}"  # leaves the checkpoint set first: a cut-short rmtree is harmless
        os.replace(p, gone)
        shutil.rmtree(gone, ignore_errors=True)


# --------------------------------------------------------------------------------------------- finding

def _read_state(ckpt: str) -> dict[str, Any]:
    """state.json of ``ckpt``, checked for format, version and required keys (CheckpointError otherwise)."""
    path = os.path.join(ckpt, STATE_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (not a checkpoint, or one cut short)") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fastlm checkpoint ('format' is not {FORMAT!r})")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint version {state.get('version')!r} "
                              f"(this fastlm reads version {VERSION})")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{path}: missing key(s) {missing}")
    files = state["files"]
    if not isinstance(files, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("sha256"), str) and isinstance(v.get("bytes"), int)
            for v in files.values()):
        raise CheckpointError(f"{path}: 'files' must map names to {{'sha256': str, 'bytes': int}}")
    bad = [n for n in files if os.path.basename(n) != n or n in ("", ".", "..")]
    if bad:
        raise CheckpointError(f"{path}: 'files' names must be plain file names, got {bad}")
    if MODEL_FILE not in files:
        raise CheckpointError(f"{path}: 'files' does not list {MODEL_FILE}")
    step = state["step"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"{path}: 'step' must be an integer >= 0, got {step!r}")
    if not isinstance(state["model_config"], dict):
        raise CheckpointError(f"{path}: 'model_config' must be an object, got {type(state['model_config']).__name__}")
    tied = state.get("tied")
    if tied is not None and not (isinstance(tied, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in tied.items())):
        raise CheckpointError(f"{path}: 'tied' must map key names to key names, got {tied!r}")
    if not isinstance(state.get("optimizer"), (dict, type(None))):
        raise CheckpointError(f"{path}: 'optimizer' must be an object or null, got {type(state['optimizer']).__name__}")
    return state


def _check_files(ckpt: str, files: dict[str, dict], *, hash_names: tuple[str, ...] | None = None) -> None:
    """Every listed file exists with its size; those in ``hash_names`` (all when None) also match sha256."""
    for name, info in files.items():
        p = os.path.join(ckpt, name)
        if not os.path.isfile(p):
            raise CheckpointError(f"{p}: missing (listed in {STATE_FILE})")
        size = os.path.getsize(p)
        if size != info["bytes"]:
            raise CheckpointError(f"{p}: {size} bytes, {STATE_FILE} says {info['bytes']} (truncated or replaced)")
        if (hash_names is None or name in hash_names) and _sha256(p) != info["sha256"]:
            raise CheckpointError(f"{p}: sha256 differs from {STATE_FILE} (file corrupt or replaced)")


def _is_complete(ckpt: str) -> bool:
    """Quick check (no hashing): a valid state.json whose files all exist with the right sizes."""
    try:
        _check_files(ckpt, _read_state(ckpt)["files"], hash_names=())
        return True
    except CheckpointError:
        return False


def list_checkpoints(path: str) -> list[str]:
    """The complete checkpoints under ``path`` (a run dir or its ``checkpoints/`` dir), oldest step first.
    ``.tmp-*`` and incomplete dirs are skipped; a ``step-N.old-<pid>`` left by a crash stands in for a
    missing or incomplete ``step-N``.

    >>> import tempfile
    >>> list_checkpoints(tempfile.mkdtemp())
    []
    """
    root = os.path.join(path, "checkpoints") if os.path.isdir(os.path.join(path, "checkpoints")) else path
    if not os.path.isdir(root):
        return []
    best: dict[int, str] = {}
    for name in sorted(os.listdir(root)):  # step-N sorts before step-N.old-*
        m = _NAME.match(name) or _OLD.match(name)
        if m is None:
            continue
        step, p = int(m.group(1)), os.path.join(root, name)
        if (step not in best or _OLD.match(os.path.basename(best[step]))) and _is_complete(p):
            best[step] = p
    return [best[k] for k in sorted(best)]


def checkpoint_step(ckpt: str) -> int:
    """The step of a checkpoint directory from its name (``step-N``, or a crash's ``step-N.old-<pid>``).

    >>> checkpoint_step("runs/x/checkpoints/step-00000300")
    300
    """
    m = _NAME.match(os.path.basename(ckpt)) or _OLD.match(os.path.basename(ckpt))
    if m is None:
        raise CheckpointError(f"{ckpt}: not a step-N checkpoint directory name")
    return int(m.group(1))


def damaged_checkpoints(path: str) -> list[tuple[str, str]]:
    """``(dir, why)`` of the ``step-N`` directories under ``path`` newer than its newest complete checkpoint
    that are not complete themselves. Saves are atomic (a ``.tmp-*`` dir renamed; a crash between the
    renames leaves a ``step-N.old-<pid>`` that `list_checkpoints` takes), so such a directory was damaged
    after it was written: truncated, replaced or half deleted.

    >>> import tempfile
    >>> damaged_checkpoints(tempfile.mkdtemp())
    []
    """
    root = os.path.join(path, "checkpoints") if os.path.isdir(os.path.join(path, "checkpoints")) else path
    if not os.path.isdir(root):
        return []
    found = list_checkpoints(path)
    newest = checkpoint_step(found[-1]) if found else -1
    damaged = []
    for name in sorted(os.listdir(root)):
        m = _NAME.match(name)
        if m is None or int(m.group(1)) <= newest:
            continue
        ckpt = os.path.join(root, name)
        try:
            _check_files(ckpt, _read_state(ckpt)["files"], hash_names=())
        except CheckpointError as e:
            damaged.append((ckpt, str(e)))
    return damaged


def latest_checkpoint(path: str, *, strict: bool = False) -> Optional[str]:
    """The newest complete checkpoint under ``path`` (a run dir, its ``checkpoints/`` dir, or a checkpoint
    dir itself, returned as is); None when there is none (see `list_checkpoints`). ``strict`` (a path the user
    named: resume, load): a damaged checkpoint newer than that (`damaged_checkpoints`) is a CheckpointError
    naming it and why, rather than passed over for an older one, which a resume would then write over.

    >>> import tempfile
    >>> latest_checkpoint(tempfile.mkdtemp()) is None
    True
    """
    if os.path.isfile(os.path.join(path, STATE_FILE)):
        return path
    found = list_checkpoints(path)
    damaged = damaged_checkpoints(path) if strict else []
    if damaged:
        ckpt, why = damaged[-1]
        older = (f"name an older checkpoint to use it (the newest complete one: {found[-1]}), after moving "
                 "the damaged one out of the way" if found else "it holds no complete checkpoint")
        raise CheckpointError(f"{path}: the newest checkpoint {os.path.basename(ckpt)} is damaged ({why}); "
                              + older)
    return found[-1] if found else None


def _resolve(path: str) -> str:
    name = os.path.basename(os.path.normpath(path))
    if os.path.isdir(path) and (_NAME.match(name) or _OLD.match(name)):
        return path  # a checkpoint dir itself: loading it says precisely what is wrong
    found = latest_checkpoint(path, strict=True)
    if found is None:
        what = "no such directory" if not os.path.exists(path) else "no complete checkpoint in it"
        raise CheckpointError(f"{path}: {what}")
    return found


# --------------------------------------------------------------------------------------------- loading

def load_checkpoint(path: str, *, map_location: str = "cpu", optimizer: bool = True) -> Checkpoint:
    """Load and verify a checkpoint (``path``: a checkpoint, a run dir or its checkpoints dir -> the latest).
    Every file is checked against state.json's size and sha256 (``optimizer=False`` skips reading and
    hashing optimizer.safetensors, for inference).

    >>> import tempfile
    >>> from fastlm.models import GPT, GPTConfig, config_to_dict
    >>> m = GPT(GPTConfig.named("tiny", vocab_size=64))
    >>> p = save_checkpoint(tempfile.mkdtemp(), 1, model_state=m.state_dict(), optimizer_state=None,
    ...                     meta={"model_config": config_to_dict(m.config)}, tokenizer_path=None)
    >>> ck = load_checkpoint(p); ck.model_state["lm_head.weight"] is ck.model_state["tok_emb.weight"]
    True
    """
    from safetensors.torch import load_file

    ckpt = _resolve(path)
    state = _read_state(ckpt)
    files = state["files"]
    wanted = tuple(n for n in files if optimizer or n != OPTIM_FILE)
    _check_files(ckpt, files, hash_names=wanted)
    device = str(map_location)

    def read(name: str) -> dict[str, torch.Tensor]:
        p = os.path.join(ckpt, name)
        try:
            return load_file(p, device=device)
        except Exception as e:  # safetensors raises its own error types for truncated/garbled headers
            raise CheckpointError(f"{p}: cannot read safetensors ({e})") from None

    model_state = read(MODEL_FILE)
    tied = state.get("tied") or {}
    for alias, target in tied.items():
        if target not in model_state:
            raise CheckpointError(f"{os.path.join(ckpt, STATE_FILE)}: tied key {alias!r} -> {target!r}, "
                                  f"but {target!r} is not in {MODEL_FILE}")
        model_state[alias] = model_state[target]
    opt_state = None
    if optimizer and state.get("optimizer") is not None:
        tensors = read(OPTIM_FILE) if OPTIM_FILE in files else {}
        try:
            opt_state = _decode(state["optimizer"], tensors)
        except KeyError as e:
            raise CheckpointError(f"{os.path.join(ckpt, OPTIM_FILE)}: tensor {e} listed in {STATE_FILE} "
                                  "is missing") from None
    return Checkpoint(path=ckpt, meta=state, model_state=model_state, optimizer_state=opt_state)


def check_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str = "checkpoint") -> None:
    """Raise CheckpointError unless ``state`` loads into ``model`` with ``strict=True``: names missing and
    unexpected keys, shape mismatches, and tied weights whose two copies differ.

    >>> from fastlm.models import GPT, GPTConfig
    >>> check_model_state(GPT(GPTConfig.named("tiny", vocab_size=64)),
    ...                   GPT(GPTConfig.named("tiny", vocab_size=64)).state_dict())
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: {list(state[k].shape)} in the checkpoint, {list(t.shape)} in the model"
              for k, t in expected.items() if k in state and state[k].shape != t.shape]
    problems = []

    def listed(keys: list[str]) -> str:
        return ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")

    if shapes:
        problems.append("shape mismatch: " + "; ".join(shapes[:6]) + (" ..." if len(shapes) > 6 else ""))
    if missing:
        problems.append(f"missing {len(missing)} key(s): {listed(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {listed(unexpected)}")
    if not problems:  # a tied model keeps one tensor: two different copies would silently lose one
        by_ptr: dict[int, str] = {}
        for k, t in expected.items():
            first = by_ptr.setdefault(t.data_ptr(), k) if t.numel() else k
            if first != k and not torch.equal(state[first].cpu(), state[k].cpu()):
                problems.append(f"{k} is tied to {first} in the model, but the checkpoint holds different values")
    if problems:
        config = getattr(model, "config", None)
        raise CheckpointError(f"{source} does not fit {type(model).__name__}"
                              f"{'(' + str(config) + ')' if config is not None else ''}: " + "; ".join(problems))


def load_model(path: str, *, device: str = "cpu"):
    """``(model, tokenizer, meta)`` from a checkpoint or a run dir (its latest checkpoint): the model built
    from ``meta["model_config"]``, weights loaded, in eval mode on ``device``; tokenizer None if not saved.

    >>> import tempfile
    >>> from fastlm.models import GPT, GPTConfig, config_to_dict
    >>> m = GPT(GPTConfig.named("tiny", vocab_size=64))
    >>> p = save_checkpoint(tempfile.mkdtemp(), 1, model_state=m.state_dict(), optimizer_state=None,
    ...                     meta={"model_config": config_to_dict(m.config)}, tokenizer_path=None)
    >>> model, tok, meta = load_model(p); model.training, tok, meta["step"]
    (False, None, 1)
    """
    from fastlm.models import build_model, config_from_dict

    ck = load_checkpoint(path, optimizer=False)
    try:
        config = config_from_dict(ck.meta["model_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{os.path.join(ck.path, STATE_FILE)}: model_config: {e}") from None
    model = build_model(config)
    check_model_state(model, ck.model_state, source=ck.path)
    model.load_state_dict(ck.model_state, strict=True)
    model.to(device).eval()
    tokenizer = None
    if ck.tokenizer_path is not None:
        from fastlm.tokenizer import Tokenizer
        tokenizer = Tokenizer.from_file(ck.tokenizer_path)
    return model, tokenizer, ck.meta


# ------------------------------------------------------------------------------------------------- rng

def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def rng_state() -> dict[str, Any]:
    """The random generators' states (python ``random``, numpy's global one, torch CPU and every CUDA
    device when available) as a JSON-safe dict, for `set_rng_state`.

    >>> s = rng_state(); a = torch.rand(2); set_rng_state(s); torch.equal(a, torch.rand(2))
    True
    """
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {"kind": kind, "keys": base64.b64encode(keys.astype("<u4").tobytes()).decode("ascii"),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generators saved by `rng_state` (parts absent from ``state`` are left alone; CUDA states
    are set for the devices both the saving and this process have)."""
    try:
        if "python" in state:
            version, internal, gauss = state["python"]
            random.setstate((version, tuple(internal), gauss))
        if "numpy" in state:
            n = state["numpy"]
            keys = np.frombuffer(base64.b64decode(n["keys"]), dtype="<u4").astype(np.uint32)
            np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
        if "torch" in state:
            torch.set_rng_state(_unb64(state["torch"]))
        if "cuda" in state and torch.cuda.is_available():
            for i, s in enumerate(state["cuda"][:torch.cuda.device_count()]):
                torch.cuda.set_rng_state(_unb64(s), i)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"rng state is malformed ({type(e).__name__}: {e})") from None
