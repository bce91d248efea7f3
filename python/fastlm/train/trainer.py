"""The training loop shared by clm, mlm, sft, reward and dpo: `run(cfg)` trains, evaluates, samples and
checkpoints one run (ppo/grpo/rloo go to `fastlm.posttrain.rl.run_rl`).

Read top to bottom (nanochat ``base_train.py``): init (process group, device, seed, precision) -> objective
(model, data) -> optimizer -> schedule -> one loop whose iteration ``step`` (optimizer steps done so far)
first runs the occasional blocks (eval, sample, checkpoint; all of them on the last iteration), then one
fenced training step, then logging. Tasks differ only in their objective (`fastlm.posttrain.objective`):
the model it builds or loads (``post.init_from``), the batch source, the loss lines, eval and sample.

Step = ``tokens_per_step`` row slots (``seq_len`` each) = ``accum`` micro-steps of ``micro_batch`` rows on
each of ``world`` ranks (SFT rows may be shorter: padded to the longest of their batch; reward/dpo rows are
pairs). Rows come from one global stream (``GlobalRows``, ``SFTRows``, ...): micro-step ``k`` reads the next
``micro_batch * world`` rows and rank ``r`` takes its contiguous share, so the data position is one cursor,
free of the world size. Logged ``tokens`` and ``tokens_per_s`` count real (non-padding) input tokens.
The loss of a step is the sum over its units (target tokens; pairs for reward/dpo) / their global count
(gradient accumulation and DDP averaging give exactly the gradient of one big batch, also for MLM's and
SFT's varying number of supervised tokens).
A non-finite loss or grad norm, or a loss above ``spike_factor`` x its running mean and at least 1 nat above it
(EMA, after 20 good steps), skips the optimizer step; ``max_bad_steps`` in a row stop the run.

Exact resume (CPU, one process): a checkpoint at step s holds the weights, AdamW state, data cursor, loop
state and RNG states after s steps; the resumed run continues the same loop from iteration s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from fastlm.train.config import TrainConfig
from fastlm.train.distributed import (DistInfo, all_reduce_sum, barrier, broadcast_object, cleanup, full_state,
                                      init_distributed, load_full_state, no_grad_sync, wrap_model)
from fastlm.train.schedule import learning_rate
from fastlm.train.stop import StopOnSignal

SPIKE_WARMUP = 20   # good steps before the spike test starts (the early loss falls too fast to judge)
SPIKE_EMA = 0.9     # running mean of the loss: ema = 0.9 ema + 0.1 loss
SPIKE_MIN_GAP = 1.0  # nats: a spike is also this far above the mean (reward/DPO losses near 0 are noisy)

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
    stopped: str = "max_steps"         # max_steps | max_time | sigterm (checkpoint written, run not finished)
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


def _run_dir(cfg: TrainConfig, info: DistInfo, resume_ckpt: Optional[str], resumed: Optional[dict] = None) -> str:
    """The run directory: ``<out>/<run_name>`` for a new run. A resume (``resumed``: the checkpoint's meta)
    continues the checkpoint's own run in place, unless ``run_name`` or ``out`` differ from the checkpoint's
    config: then the run branches into a new ``<out>/<run_name>`` (which must hold no checkpoints). Continuing
    an older checkpoint in place while later ones exist is refused: pruning would mix the two histories."""
    from fastlm.train.checkpoint import CheckpointError, checkpoint_step, list_checkpoints
    if resume_ckpt is not None:  # <run_dir>/checkpoints/step-XXXXXXXX
        own = os.path.dirname(os.path.dirname(os.path.abspath(resume_ckpt)))
        stored = (resumed or {}).get("train_config") or {}
        if cfg.run_name != stored.get("run_name") or cfg.out != stored.get("out"):
            run_dir = os.path.abspath(os.path.join(cfg.out, cfg.run_name or os.path.basename(own)))
            if run_dir != own:
                if list_checkpoints(run_dir):
                    raise CheckpointError(f"{run_dir} already holds checkpoints: branch the run from {resume_ckpt} "
                                          "under another --run-name (or --out)")
                return run_dir  # its log starts with the run's history: `branch_history`, once set up
        step = (resumed or {}).get("step")
        later = [os.path.basename(c) for c in list_checkpoints(own)
                 if isinstance(step, int) and checkpoint_step(c) > step]
        if later:
            raise CheckpointError(f"--resume {resume_ckpt}: its run {own} has later checkpoints ({', '.join(later)}); "
                                  "continuing it in place would mix two histories: branch it into a new run with "
                                  "--run-name NAME (or resume the run's latest checkpoint)")
        return own
    name = cfg.run_name or f"{cfg.task}-{cfg.model.size}-{time.strftime('%Y%m%d-%H%M%S')}"
    return os.path.abspath(os.path.join(cfg.out, broadcast_object(name, info)))


def branch_history(run_dir: str, resume_ckpt: Optional[str]) -> None:
    """A branched resume's log starts with the history of the run it branches from: copy that run's
    metrics.jsonl into ``run_dir`` (the logger then cuts it at the resumed step). Called once the run is set
    up, right before its logger opens, so that a run failing at setup leaves no log behind and
    `discard_if_unstarted` removes the directory it made."""
    if resume_ckpt is None:
        return
    own = os.path.dirname(os.path.dirname(os.path.abspath(resume_ckpt)))  # <run_dir>/checkpoints/step-XXXXXXXX
    history, log = os.path.join(own, "metrics.jsonl"), os.path.join(run_dir, "metrics.jsonl")
    if os.path.abspath(run_dir) != own and os.path.isfile(history) and not os.path.exists(log):
        import shutil
        shutil.copyfile(history, log)


def _open_run_dir(cfg: TrainConfig, run_dir: str, created: Optional[list[str]]) -> None:
    """Make the run directory (noted in ``created`` when this run makes it: `discard_if_unstarted`) and
    write its config.yaml."""
    import yaml
    from fastlm.data.io import atomic_write
    if created is not None and not os.path.exists(run_dir):
        created.append(run_dir)
    os.makedirs(run_dir, exist_ok=True)
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
    ckpt = latest_checkpoint(resume, strict=True)
    if ckpt is None:
        raise CheckpointError(f"--resume {resume}: no complete checkpoint there")
    return ckpt


def check_resume_meta(meta: dict, ckpt: str, needed: dict) -> None:
    """Refuse a checkpoint whose state.json lacks, or garbles, what a resume reads back: the loop state, data
    position, RNG states, optimizer state (exact resume needs them all) and ``needed`` (key -> type; optional
    when the types include NoneType)."""
    from fastlm.train.checkpoint import STATE_FILE, CheckpointError
    where = os.path.join(ckpt, STATE_FILE)
    for key, kind in {"train_config": dict, "loop": dict, "data_state": dict, "rng": dict, **needed}.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise CheckpointError(f"{where}: {key!r} is missing or malformed ({meta.get(key)!r:.60}): not a "
                                  "checkpoint a training run can resume from")
    bad = {k: v for k, v in meta["loop"].items() if not isinstance(v, (int, float)) or isinstance(v, bool)}
    if bad or meta["loop"].get("step") != meta["step"]:
        raise CheckpointError(f"{where}: 'loop' {meta['loop']!r:.100} does not hold the numbers of step {meta['step']}")
    if meta.get("optimizer") is None:
        raise CheckpointError(f"{where}: no optimizer state, so the run cannot continue exactly (start a new "
                              "run from its weights instead: post.init_from)")


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
    if cfg.task in ("ppo", "grpo", "rloo"):
        from fastlm.posttrain.rl import run_rl  # its own loop: rollouts, then several passes per batch
        return run_rl(cfg, resume=resume, console=console)
    started_pg = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    info = init_distributed(cfg.device)
    created: list[str] = []
    try:
        with discard_if_unstarted(created), StopOnSignal() as stop:
            result = _train(cfg, info, resume, console, created, stop)
        if started_pg:
            barrier(info)  # every rank leaves together (rank 0 may still be plotting): then tear down
        return result
    finally:
        if started_pg:
            cleanup(info)


@contextlib.contextmanager
def discard_if_unstarted(created: list[str]):
    """A run that fails before it logs a step or writes a checkpoint (a refused init_from, data, prompts) removes
    the run directory it created (``created``: filled by the run), so a failed start leaves no empty run
    behind; one that got further keeps its logs."""
    from fastlm.train.checkpoint import list_checkpoints
    try:
        yield
    except BaseException:
        for d in created:
            if not os.path.exists(os.path.join(d, "metrics.jsonl")) and not list_checkpoints(d):
                import shutil
                shutil.rmtree(d, ignore_errors=True)
        raise


def _train(cfg: TrainConfig, info: DistInfo, resume: Optional[str], console: bool,
           created: Optional[list[str]] = None, stop: Optional[StopOnSignal] = None) -> TrainResult:
    from fastlm.train import checkpoint as ck
    from fastlm.train.metrics import MetricsLogger, plot_losses

    # ---- init: run dir, seed, precision
    device = info.device
    precision = _precision(cfg, device)
    resume_ckpt = _resolve_resume(resume) if resume else None
    state = ck.load_checkpoint(resume_ckpt) if resume_ckpt else None  # every rank reads it (CPU)
    if state is not None:
        check_resume_meta(state.meta, resume_ckpt, {"tokens_per_step": (int, type(None)),  # None: may be absent
                                                    "world_size": (int, type(None)), "init_from": (str, type(None))})
    run_dir = _run_dir(cfg, info, resume_ckpt, state.meta if state is not None else None)
    say = print if (info.is_main and console) else (lambda *a, **k: None)
    if info.is_main:
        _open_run_dir(cfg, run_dir, created)
    say(f"fastlm-train: {cfg.task} run in {run_dir} (device {device}, {precision}, world {info.world_size})")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())

    # ---- objective: model (built, or loaded from post.init_from), tokenizer, batch source, loss lines
    from fastlm.posttrain.objective import make_objective
    obj_cfg = cfg
    if state is not None and "init_from" in state.meta:  # the model the run started from, not a newer "auto"
        post = dataclasses.replace(cfg.post, init_from=state.meta["init_from"] or "none")
        obj_cfg = dataclasses.replace(cfg, post=post)
    objective = make_objective(obj_cfg, info, run_dir=run_dir, log=say)
    raw = objective.model.to(device)
    T = objective.seq_len
    flops_per_token = raw.flops_per_token(T) if hasattr(raw, "flops_per_token") else 0
    if hasattr(raw, "num_params"):
        say(f"model: {type(raw).__name__} {raw.num_params():,} params ({raw.num_params(non_embedding=True):,} "
            f"non-embedding), vocab {objective.model_config.get('vocab_size')}, "
            f"{flops_per_token / 1e6:.2f} MFLOPs/token"
            + (f"; from {objective.init_from}" if objective.init_from else ""))
    model = wrap_model(raw, info, cfg.distributed)
    optimizer = _optimizer(model if cfg.distributed == "fsdp" else raw, cfg, device)
    fwd = torch.compile(model) if cfg.compile else model
    torch.manual_seed(cfg.seed + info.rank)

    # ---- steps: rows per step, micro-steps
    micro_global = cfg.micro_batch * info.world_size
    # 0 = one micro-batch on every rank; a resumed run keeps its checkpoint's batch under any world size
    saved_batch = (state.meta.get("tokens_per_step") or 0) if state else 0
    tokens_per_step = cfg.tokens_per_step or saved_batch or micro_global * T
    if tokens_per_step % (micro_global * T):
        if not cfg.tokens_per_step:  # the batch is the checkpoint's: say where the number comes from
            raise ValueError(f"--resume {resume_ckpt}: its batch of {tokens_per_step} tokens/step (kept when "
                             f"tokens_per_step=0) is not a multiple of micro_batch x seq_len x world = "
                             f"{cfg.micro_batch} x {T} x {info.world_size} = {micro_global * T}: resume with a "
                             "micro_batch that divides it, or set tokens_per_step to change the batch")
        raise ValueError(f"tokens_per_step {tokens_per_step} is not a multiple of micro_batch x seq_len x world "
                         f"= {micro_global * T}")
    accum = tokens_per_step // (micro_global * T)
    say(f"batch: {tokens_per_step:,} tokens/step = {accum} micro-step(s) x {cfg.micro_batch} rows x "
        f"{info.world_size} rank(s) x {T} tokens; {cfg.max_steps} steps")

    # ---- resume: weights, optimizer, data cursor, loop state, RNG
    loop = {"step": 0, "tokens": 0, "ema": 0.0, "good": 0, "bad_run": 0, "skipped": 0}
    if state is not None:
        _check_resume(cfg, state.meta, objective.model_config, objective.tokenizer_path, resume_ckpt)
        load_full_state(model, optimizer, state.model_state, state.optimizer_state)
        try:
            objective.load_state_dict(state.meta["data_state"])
        except (ValueError, KeyError, TypeError) as e:  # the loaders name the setting that differs
            raise ck.CheckpointError(f"--resume {resume_ckpt}: its data position does not fit this run's training "
                                     f"data ({e}): resume with the data settings saved in the checkpoint (data.*, "
                                     "post.* data, seed)") from None
        if saved_batch and tokens_per_step != saved_batch:
            say(f"note: the batch changes from the checkpoint's {saved_batch:,} to {tokens_per_step:,} tokens/step: "
                "the data continues where it stopped, but the run no longer matches one that never stopped")
        loop.update(state.meta["loop"])
        if info.world_size == 1 and state.meta.get("world_size", 1) == 1:
            ck.set_rng_state(state.meta["rng"])  # exact continuation; else fresh per-rank streams
        else:
            torch.manual_seed(cfg.seed + info.rank + 7919 * loop["step"])
        say(f"resumed from {resume_ckpt} at step {loop['step']}")
        del state
    start_step = loop["step"]

    if info.is_main:
        branch_history(run_dir, resume_ckpt)
    logger = MetricsLogger(run_dir, total_steps=cfg.max_steps, console=console,
                           tensorboard=cfg.tensorboard, start_step=start_step) if info.is_main else None
    log = logger.log if logger else (lambda *a, **k: None)
    message = logger.message if logger else (lambda *a, **k: None)
    if objective.summary and resume_ckpt is None:
        log(0, **objective.summary)

    # ---- the loop
    result = TrainResult(run_dir=run_dir, checkpoint=resume_ckpt, step=start_step)
    t_start = time.time()
    tokens_log, time_log, train_time = 0, 0.0, 0.0  # tokens/s over training time only (no eval, no saving)
    loss_log, n_loss_log = loop.pop("loss_log", 0.0), loop.pop("n_loss_log", 0)  # the log interval so far
    step = start_step
    stop = stop or StopOnSignal()
    stop.arm()  # a SIGTERM from here on: this step, a checkpoint, then stop (fastlm.train.stop)
    signalled = False  # some rank had a SIGTERM by the end of the last step (it travels in the step's all-reduce)
    while True:
        last = step >= cfg.max_steps
        fresh = step == start_step and resume_ckpt is not None  # this iteration's blocks ran before the stop
        if cfg.max_time > 0 and not last:  # every rank stops together
            over = all_reduce_sum([float(time.time() - t_start > cfg.max_time)], info)[0] > 0
            if over:
                last, result.stopped = True, "max_time"
        if not last and (signalled or (not info.distributed and stop.requested)):
            last, result.stopped = True, "sigterm"
            say(f"SIGTERM: stopping at step {step} with a checkpoint (another SIGTERM ends the run at once)")
        quick = result.stopped == "sigterm"  # a grace period before SIGKILL: the checkpoint only

        # -- occasional blocks: eval, sample, checkpoint
        if (last or (cfg.eval_every and step % cfg.eval_every == 0)) and not fresh and not quick:
            vals = objective.evaluate(raw)
            if vals:
                result.val = {k.split("/", 1)[1] if k.startswith("val/") else k: v for k, v in vals.items()}
                log(step, **vals)
        if (last or (cfg.sample_every and step % cfg.sample_every == 0 and step > 0)) and not fresh and not quick:
            result.sample = objective.sample(raw, device, autocast)
            if not last:  # the final sample is in the result (fastlm-train prints it with the summary)
                message(f"sample @ {step}: {result.sample!r}")
        if step > 0 and not fresh and (last or (cfg.ckpt_every and step % cfg.ckpt_every == 0)):
            model_state, optim_state = full_state(model, optimizer)
            if info.is_main:
                meta = {"model_config": objective.model_config, "train_config": cfg.to_dict(),
                        "data_state": objective.state_dict(), "rng": ck.rng_state(),
                        "loop": {**loop, "loss_log": loss_log, "n_loss_log": n_loss_log},  # + the log interval
                        "world_size": info.world_size, "tokens_per_step": tokens_per_step,
                        "val": result.val, "init_from": objective.init_from}
                result.checkpoint = ck.save_checkpoint(
                    os.path.join(run_dir, "checkpoints"), step, model_state=model_state,
                    optimizer_state=optim_state, meta=meta, tokenizer_path=objective.tokenizer_path,
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
        # sum of the loss over every unit of the step, then / the global unit count (known only after the
        # forward passes: SFT/MLM vary it): grads of loss_sum x world (DDP/FSDP average ranks) are divided
        # by the total before clipping, which is exactly the gradient of the step's mean loss
        loss_sum, units, sums, step_tokens = 0.0, 0.0, {}, 0
        for k in range(accum):
            batch = objective.to_device(objective.next_micro(micro_global), device)
            with autocast:
                s, n, metrics = objective.loss(fwd, batch, kernels=cfg.model.kernels)
            with no_grad_sync(model, info.distributed and k < accum - 1):
                (s * info.world_size).backward()
            loss_sum += float(s.detach())
            units += float(n)
            step_tokens += objective.tokens(batch)
            for key, v in metrics.items():
                sums[key] = sums.get(key, 0.0) + float(v)
        keys = sorted(sums)
        totals = all_reduce_sum([loss_sum, units, float(step_tokens)] + [sums[key] for key in keys]
                                + [float(stop.requested)], info)
        signalled = totals.pop() > 0
        n_units = max(totals[1], 1.0)
        train_loss = totals[0] / n_units
        step_tokens = int(totals[2])
        step_metrics = {key: v / n_units for key, v in zip(keys, totals[3:])}
        for p in model.parameters():
            if p.grad is not None:
                p.grad.div_(n_units)
        grad_norm = _grad_norm(model, cfg.optim.grad_clip)
        finite = math.isfinite(train_loss) and math.isfinite(grad_norm)
        spike = (loop["good"] >= SPIKE_WARMUP and train_loss > cfg.spike_factor * loop["ema"]
                 and train_loss - loop["ema"] > SPIKE_MIN_GAP)
        if finite and not spike:
            optimizer.step()
            loop["ema"] = train_loss if loop["good"] == 0 else SPIKE_EMA * loop["ema"] + (1 - SPIKE_EMA) * train_loss
            loop["good"] += 1
            loop["bad_run"] = 0
            loss_log += train_loss
            n_loss_log += 1
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
        loop["tokens"] += step_tokens
        tokens_log += step_tokens

        # -- logging
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            tps = tokens_log / max(time_log, 1e-9)
            peak = peak_flops(device, precision)
            mfu = flops_per_token * tps / (peak * info.world_size) if peak else None
            if n_loss_log:  # the mean train loss of the interval's good steps (a smoother curve)
                log(step, **{"train/loss": loss_log / n_loss_log, **step_metrics, "lr": lr, "grad_norm": grad_norm,
                             "tokens_per_s": tps, "mfu": mfu, "tokens": loop["tokens"]})
            tokens_log, time_log, loss_log, n_loss_log = 0, 0.0, 0.0, 0

    result.step = step
    result.skipped = loop["skipped"]
    if logger is not None:
        logger.close()
        if cfg.plot:
            png = plot_losses(os.path.join(run_dir, "metrics.jsonl"), os.path.join(run_dir, "loss.png"))
            if png is None:
                say("loss plot skipped (pip install matplotlib for loss.png)")
    if result.stopped != "sigterm":  # (fastlm-train says how to continue a stopped run)
        say(f"done: {step} steps in {time.time() - t_start:.1f}s ({train_time:.1f}s training)")
    return result
