"""The pretraining loop (CLM and MLM): `run(cfg)` trains, evaluates, samples and checkpoints one run.

Read top to bottom (nanochat ``base_train.py``): init (process group, device, seed, precision) -> data ->
model -> optimizer -> schedule -> one loop whose iteration ``step`` (optimizer steps done so far) first runs
the occasional blocks (eval, sample, checkpoint; all of them on the last iteration), then one fenced
training step, then logging. CLM and MLM differ only in the batch source and the loss lines.

Step = ``tokens_per_step`` tokens = ``accum`` micro-steps of ``micro_batch`` rows on each of ``world`` ranks.
Rows come from one global stream (``GlobalRows``): micro-step ``k`` reads the next ``micro_batch * world``
rows and rank ``r`` takes its contiguous share, so the data position is one cursor, free of the world size.
The loss of a step is the sum over its target tokens / their global count (gradient accumulation and DDP
averaging give exactly the gradient of one big batch, also for MLM's varying number of masked tokens).
A non-finite loss or grad norm, or a loss above ``spike_factor`` x its running mean (EMA, after 20 good
steps), skips the optimizer step; ``max_bad_steps`` in a row stop the run.

Exact resume (CPU, one process): a checkpoint at step s holds the weights, AdamW state, data cursor, loop
state and RNG states after s steps; the resumed run continues the same loop from iteration s.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from fastlm.train.batches import Batches, load_batches
from fastlm.train.config import TrainConfig
from fastlm.train.distributed import (DistInfo, all_reduce_sum, barrier, broadcast_object, cleanup, full_state,
                                      init_distributed, load_full_state, no_grad_sync, wrap_model)
from fastlm.train.evaluate import evaluate_clm, evaluate_mlm
from fastlm.train.sampling import sample_text
from fastlm.train.schedule import learning_rate

SPIKE_WARMUP = 20   # good steps before the spike test starts (the early loss falls too fast to judge)
SPIKE_EMA = 0.9     # running mean of the loss: ema = 0.9 ema + 0.1 loss

# Peak dense bf16 tensor-core FLOP/s per GPU for MFU (vendor datasheets, no sparsity). CPU: MFU not reported.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "GH200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12,
              "L4": 121e12, "4090": 165e12, "3090": 71e12}


@dataclass
class TrainResult:
    """What a run produced."""
    run_dir: str                       # <out>/<run_name>
    checkpoint: Optional[str]          # the last checkpoint written (None if none)
    step: int                          # optimizer steps done
    val: dict = field(default_factory=dict)  # last evaluation (loss, ppl, bpb | accuracy, tokens)
    sample: str = ""                   # last sample text
    stopped: str = "max_steps"         # max_steps | max_time
    skipped: int = 0                   # optimizer steps skipped (spike / NaN)


def peak_flops(device: torch.device, precision: str) -> Optional[float]:
    """Peak FLOP/s of one device for MFU, or None (CPU, fp32, unknown GPU).

    >>> peak_flops(torch.device("cpu"), "fp32") is None
    True
    """
    if device.type != "cuda" or precision != "bf16":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def _precision(cfg: TrainConfig, device: torch.device) -> str:
    return ("bf16" if device.type == "cuda" else "fp32") if cfg.precision == "auto" else cfg.precision


def _run_dir(cfg: TrainConfig, info: DistInfo, resume_ckpt: Optional[str]) -> str:
    if resume_ckpt is not None:  # <run_dir>/checkpoints/step-XXXXXXXX
        return os.path.dirname(os.path.dirname(os.path.abspath(resume_ckpt)))
    name = cfg.run_name or f"{cfg.task}-{cfg.model.size}-{time.strftime('%Y%m%d-%H%M%S')}"
    return os.path.abspath(os.path.join(cfg.out, broadcast_object(name, info)))


def _write_config(cfg: TrainConfig, run_dir: str) -> None:
    import yaml
    from fastlm.data.io import atomic_write
    with atomic_write(os.path.join(run_dir, "config.yaml")) as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)


def _optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (embeddings, norms and biases get none)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 and "emb" not in name else no_decay).append(p)
    o = cfg.optim
    fused = {"on": True, "off": False, "auto": device.type == "cuda"}[o.fused]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, fused=fused or None)


def _grad_norm(model: torch.nn.Module, max_norm: float) -> float:
    """Global grad norm (clipped to ``max_norm`` when > 0), as a float on every rank."""
    limit = max_norm if max_norm > 0 else float("inf")
    if hasattr(model, "clip_grad_norm_"):  # FSDP1
        norm = model.clip_grad_norm_(limit)
    else:
        norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], limit)
    if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
        norm = norm.full_tensor()
    return float(norm)


def _resolve_resume(resume: str) -> str:
    from fastlm.train.checkpoint import CheckpointError, latest_checkpoint
    ckpt = latest_checkpoint(resume)
    if ckpt is None:
        raise CheckpointError(f"--resume {resume}: no complete checkpoint there")
    return ckpt


def _check_resume(cfg: TrainConfig, meta: dict, model_config: dict, tokenizer_path: str, ckpt: str) -> None:
    """Refuse a checkpoint whose model or tokenizer differs from this run's."""
    from fastlm.tokenizer.shards import file_sha256
    from fastlm.train.checkpoint import CheckpointError
    if meta.get("model_config") != model_config:
        diff = sorted(k for k in set(model_config) | set(meta.get("model_config", {}))
                      if model_config.get(k) != meta.get("model_config", {}).get(k))
        raise CheckpointError(f"{ckpt}: its model differs from this run's config in {diff} "
                              "(resume with the checkpoint's own config)")
    tok = os.path.join(ckpt, "tokenizer.fastlm")
    if os.path.isfile(tok) and file_sha256(tok) != file_sha256(tokenizer_path):
        raise CheckpointError(f"{ckpt}: tokenizer.fastlm differs from this run's tokenizer {tokenizer_path}")
    if meta.get("train_config", {}).get("task", cfg.task) != cfg.task:
        raise CheckpointError(f"{ckpt}: task {meta['train_config']['task']!r} differs from {cfg.task!r}")


def resume_config(resume: str, overrides: Optional[list[str]] = None) -> TrainConfig:
    """The ``TrainConfig`` saved in the latest checkpoint of ``resume`` (a run or checkpoint dir), with
    ``key=value`` overrides (e.g. ``max_steps=2000`` to extend a run), for ``run(cfg, resume=resume)``."""
    from fastlm.train.checkpoint import load_checkpoint
    from fastlm.train.config import load_train_config
    meta = load_checkpoint(_resolve_resume(resume), optimizer=False).meta
    return load_train_config(None, overrides, base=meta["train_config"])


def run(cfg: TrainConfig, *, resume: Optional[str] = None, console: bool = True) -> TrainResult:
    """Train ``cfg`` (under torchrun: every rank calls it); ``resume`` = a run or checkpoint dir to continue.

    >>> # run(TrainConfig(max_steps=100))  # the README's main job: tiny CLM on the built-in corpus
    """
    started_pg = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    info = init_distributed(cfg.device)
    try:
        return _train(cfg, info, resume, console)
    finally:
        if started_pg:
            cleanup(info)


def _train(cfg: TrainConfig, info: DistInfo, resume: Optional[str], console: bool) -> TrainResult:
    from fastlm.models import build_model, config_to_dict, model_config_for
    from fastlm.train import checkpoint as ck
    from fastlm.train.metrics import MetricsLogger, plot_losses

    # ---- init: run dir, seed, precision
    device = info.device
    precision = _precision(cfg, device)
    resume_ckpt = _resolve_resume(resume) if resume else None
    state = ck.load_checkpoint(resume_ckpt) if resume_ckpt else None  # every rank reads it (CPU)
    run_dir = _run_dir(cfg, info, resume_ckpt)
    say = print if (info.is_main and console) else (lambda *a, **k: None)
    if info.is_main:
        os.makedirs(run_dir, exist_ok=True)
        _write_config(cfg, run_dir)
    say(f"fastlm-train: {cfg.task} run in {run_dir} (device {device}, {precision}, world {info.world_size})")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())

    # ---- data: rank 0 prepares (tokenizer, shards), the others wait and reuse it
    from fastlm.train.prepare import prepare_data
    prepared = prepare_data(cfg, log=say) if info.is_main else None
    barrier(info)
    prepared = broadcast_object(prepared, info)
    batches: Batches = load_batches(cfg, prepared, info)

    # ---- model (same init on every rank: FSDP shards a full model), then per-rank RNG streams
    torch.manual_seed(cfg.seed)
    mcfg = model_config_for(cfg.task, cfg.model.size, cfg.model.overrides, vocab_size=batches.tokenizer.n_vocab)
    if cfg.data.seq_len > mcfg.max_seq_len:
        raise ValueError(f"data.seq_len {cfg.data.seq_len} > the model's max_seq_len {mcfg.max_seq_len} "
                         "(set model.overrides.max_seq_len)")
    raw = build_model(mcfg).to(device)
    flops_per_token = raw.flops_per_token(cfg.data.seq_len)
    say(f"model: {type(raw).__name__} {raw.num_params():,} params ({raw.num_params(non_embedding=True):,} "
        f"non-embedding), vocab {mcfg.vocab_size}, {flops_per_token / 1e6:.2f} MFLOPs/token")
    model = wrap_model(raw, info, cfg.distributed)
    optimizer = _optimizer(model if cfg.distributed == "fsdp" else raw, cfg, device)
    fwd = torch.compile(model) if cfg.compile else model
    torch.manual_seed(cfg.seed + info.rank)

    # ---- steps: rows per step, micro-steps
    T = cfg.data.seq_len
    micro_global = cfg.micro_batch * info.world_size
    # 0 = one micro-batch on every rank; a resumed run keeps its checkpoint's batch under any world size
    tokens_per_step = (cfg.tokens_per_step or (state.meta.get("tokens_per_step", 0) if state else 0)
                       or micro_global * T)
    if tokens_per_step % (micro_global * T):
        raise ValueError(f"tokens_per_step {tokens_per_step} is not a multiple of micro_batch x seq_len x world "
                         f"= {micro_global * T}")
    accum = tokens_per_step // (micro_global * T)
    say(f"batch: {tokens_per_step:,} tokens/step = {accum} micro-step(s) x {cfg.micro_batch} rows x "
        f"{info.world_size} rank(s) x {T} tokens; {cfg.max_steps} steps")

    # ---- resume: weights, optimizer, data cursor, loop state, RNG
    loop = {"step": 0, "tokens": 0, "ema": 0.0, "good": 0, "bad_run": 0, "skipped": 0}
    if state is not None:
        _check_resume(cfg, state.meta, config_to_dict(mcfg), batches.tokenizer_path, resume_ckpt)
        load_full_state(model, optimizer, state.model_state, state.optimizer_state)
        batches.train.load_state_dict(state.meta["data_state"])
        loop.update(state.meta["loop"])
        if info.world_size == 1 and state.meta.get("world_size", 1) == 1:
            ck.set_rng_state(state.meta["rng"])  # exact continuation; else fresh per-rank streams
        else:
            torch.manual_seed(cfg.seed + info.rank + 7919 * loop["step"])
        say(f"resumed from {resume_ckpt} at step {loop['step']}")
        del state
    start_step = loop["step"]

    logger = MetricsLogger(run_dir, total_steps=cfg.max_steps, console=console,
                           tensorboard=cfg.tensorboard, start_step=start_step) if info.is_main else None
    log = logger.log if logger else (lambda *a, **k: None)
    message = logger.message if logger else (lambda *a, **k: None)

    # ---- the loop
    result = TrainResult(run_dir=run_dir, checkpoint=resume_ckpt, step=start_step)
    t_start = time.time()
    tokens_log, time_log, train_time = 0, 0.0, 0.0  # tokens/s over training time only (no eval, no saving)
    step = start_step
    while True:
        last = step >= cfg.max_steps
        fresh = step == start_step and resume_ckpt is not None  # this iteration's blocks ran before the stop
        if cfg.max_time > 0 and not last:  # every rank stops together
            over = all_reduce_sum([float(time.time() - t_start > cfg.max_time)], info)[0] > 0
            if over:
                last, result.stopped = True, "max_time"

        # -- occasional blocks: eval, sample, checkpoint
        if batches.val is not None and (last or (cfg.eval_every and step % cfg.eval_every == 0)) and not fresh:
            if cfg.task == "clm":
                r = evaluate_clm(raw, batches.val, byte_lengths=batches.byte_lengths, kernels=cfg.model.kernels)
                vals = {"val/loss": r["loss"], "val/ppl": r["ppl"], "val/bpb": r["bpb"]}
            else:
                r = evaluate_mlm(raw, batches.val, kernels=cfg.model.kernels)
                vals = {"val/loss": r["loss"], "val/ppl": r["ppl"], "val/accuracy": r["accuracy"]}
            result.val = r
            log(step, **vals)
        if (last or (cfg.sample_every and step % cfg.sample_every == 0 and step > 0)) and not fresh:
            result.sample = sample_text(raw, batches.tokenizer, cfg, device, autocast)
            if not last:  # the final sample is in the result (fastlm-train prints it with the summary)
                message(f"sample @ {step}: {result.sample!r}")
        if step > 0 and not fresh and (last or (cfg.ckpt_every and step % cfg.ckpt_every == 0)):
            model_state, optim_state = full_state(model, optimizer)
            if info.is_main:
                meta = {"model_config": config_to_dict(mcfg), "train_config": cfg.to_dict(),
                        "data_state": batches.train.state_dict(), "rng": ck.rng_state(),
                        "loop": dict(loop), "world_size": info.world_size, "tokens_per_step": tokens_per_step,
                        "val": result.val}
                result.checkpoint = ck.save_checkpoint(
                    os.path.join(run_dir, "checkpoints"), step, model_state=model_state,
                    optimizer_state=optim_state, meta=meta, tokenizer_path=batches.tokenizer_path,
                    keep_last=cfg.keep_last)
            del model_state, optim_state
            barrier(info)
            result.checkpoint = broadcast_object(result.checkpoint, info)
        if last:
            break

        # -- one training step
        t0 = time.time()
        lr = learning_rate(step, cfg.optim, cfg.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        micro = [batches.next_micro(micro_global) for _ in range(accum)]  # the whole step's rows first
        n_targets = all_reduce_sum([float(sum(int((y != -100).sum()) for _, y in micro))], info)[0]
        loss_sum = 0.0
        for k, (x, y) in enumerate(micro):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast:
                s = fwd(x, y, kernels=cfg.model.kernels, reduction="sum")
            loss = s * (info.world_size / max(n_targets, 1.0))  # DDP/FSDP average ranks: x world
            with no_grad_sync(model, info.distributed and k < accum - 1):
                loss.backward()
            loss_sum += float(s.detach())
        train_loss = all_reduce_sum([loss_sum], info)[0] / max(n_targets, 1.0)
        grad_norm = _grad_norm(model, cfg.optim.grad_clip)
        finite = math.isfinite(train_loss) and math.isfinite(grad_norm)
        spike = loop["good"] >= SPIKE_WARMUP and train_loss > cfg.spike_factor * loop["ema"]
        if finite and not spike:
            optimizer.step()
            loop["ema"] = train_loss if loop["good"] == 0 else SPIKE_EMA * loop["ema"] + (1 - SPIKE_EMA) * train_loss
            loop["good"] += 1
            loop["bad_run"] = 0
        else:
            loop["skipped"] += 1
            loop["bad_run"] += 1
            why = "non-finite loss/grad norm" if not finite else f"loss spike ({train_loss:.3f} > " \
                f"{cfg.spike_factor} x running mean {loop['ema']:.3f})"
            message(f"step {step + 1}: {why}: step skipped")
            log(step + 1, skipped=1, **({"train/loss": train_loss} if finite else {}))
            if loop["bad_run"] >= cfg.max_bad_steps:
                if logger is not None:
                    logger.close()
                raise RuntimeError(f"stopping: {loop['bad_run']} bad steps in a row (spike or NaN/inf; "
                                   f"max_bad_steps={cfg.max_bad_steps}) at step {step + 1}; last good "
                                   f"checkpoint: {result.checkpoint}. Lower optim.lr or check the data.")
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.time() - t0
        train_time += dt
        time_log += dt
        step += 1
        loop["step"] = step
        loop["tokens"] += tokens_per_step
        tokens_log += tokens_per_step

        # -- logging
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            tps = tokens_log / max(time_log, 1e-9)
            peak = peak_flops(device, precision)
            mfu = flops_per_token * tps / (peak * info.world_size) if peak else None
            if finite and not spike:
                log(step, **{"train/loss": train_loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": tps,
                             "mfu": mfu, "tokens": loop["tokens"]})
            tokens_log, time_log = 0, 0.0

    result.step = step
    result.skipped = loop["skipped"]
    if logger is not None:
        logger.close()
        if cfg.plot:
            png = plot_losses(os.path.join(run_dir, "metrics.jsonl"), os.path.join(run_dir, "loss.png"))
            if png is None:
                say("loss plot skipped (pip install matplotlib for loss.png)")
    say(f"done: {step} steps in {time.time() - t_start:.1f}s ({train_time:.1f}s training)")
    return result
