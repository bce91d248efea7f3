"""Benchmark: fastlm's CLM trainer (`fastlm.train.trainer.run`) vs a plain PyTorch GPT of the same shape
(benchmarks/nanogpt_ref.py: nn.Linear, RMSNorm, rotary, SwiGLU, F.scaled_dot_product_attention,
F.cross_entropy on the logits, torch AdamW) trained on the same token shards, same rows, same steps.

Fair by construction: one TrainConfig drives both. The reference loop reads the trainer's own batch stream
(`fastlm.train.batches.load_batches`: the same train rows in the same order, the same val rows), uses the
same lr schedule function, the same AdamW groups (decay on matrices), grad clipping, bf16 autocast on GPU,
and starts from the same initial weights (fastlm's init, copied in; the max logits difference of the two
models on a val row is recorded as a check). Each contender runs in its own
subprocess (peak memory = that process's ru_maxrss, or CUDA max_memory_allocated, read at its last training
log line, before the trainer's end-of-run sample and checkpoint). Both stop at the same wall-clock budget
(`max_time`; evaluation time counts, as it would in a real run) and evaluate every `--eval-steps` steps,
so the table shows val loss after the same number of steps and after the same time. The lr schedule is
constant after warmup (the step count at the budget is not known in advance), at 1e-3 by default.

    python benchmarks/bench_train.py --quick                 # ~1 minute on a CPU
    python benchmarks/bench_train.py --quick --repeats 3     # alternating runs on a noisy machine
    python benchmarks/bench_train.py --quick --steps-only 20 --profile   # model steps only, interleaved
    python benchmarks/bench_train.py --budget-s 120 --size small --set data.seq_len=512 --micro-batch 32
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

from _child import run_script

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _setup  # noqa: E402,F401  (fastlm: the built checkout, else the installed package)
WARMUP_LOGS = 2  # logged intervals dropped before the tokens/s median (allocator, caches, autotuning)


def _peak_memory() -> dict:
    import torch
    out = {"rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux: KiB
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _device_name(cfg) -> str:
    import torch
    if cfg.device == "cpu" or not torch.cuda.is_available():
        return f"cpu ({torch.get_num_threads()} threads)"
    return torch.cuda.get_device_name()


def _summary(logs: list[dict], vals: list[dict], eval_steps: int, mem: dict, extra: dict) -> dict:
    tps = [r["tokens_per_s"] for r in logs]
    steady = tps[WARMUP_LOGS:] or tps
    at_n = next((v["val/loss"] for v in vals if v["step"] == eval_steps), None)
    train_n = next((r["train/loss"] for r in logs if r["step"] == eval_steps), None)
    return {"tokens_per_s": statistics.median(steady) if steady else None, "n_intervals": len(steady),
            "train_at_steps": train_n,
            "val_at_steps": at_n, "val_final": vals[-1]["val/loss"] if vals else None,
            "final_step": vals[-1]["step"] if vals else None, **mem, **extra,
            "train_loss": [[r["step"], r["train/loss"]] for r in logs], "val_loss": [[v["step"], v["val/loss"]]
                                                                                  for v in vals]}


# ------------------------------------------------------------------------------------ contender: fastlm

def child_fastlm(spec: dict) -> dict:
    import torch

    import fastlm.train.metrics as metrics
    from fastlm.config import from_dict
    from fastlm.train.config import TrainConfig
    from fastlm.train.trainer import run

    cfg = from_dict(TrainConfig, spec["cfg"])
    mem: dict = {}
    original = metrics.MetricsLogger.log

    def log(self, step, **values):  # memory at each training log line (before the end-of-run blocks)
        if "train/loss" in values:
            mem.update(_peak_memory())
        return original(self, step, **values)

    metrics.MetricsLogger.log = log
    t0 = time.time()
    res = run(cfg, console=False)
    wall = time.time() - t0
    rows = [json.loads(line) for line in open(os.path.join(res.run_dir, "metrics.jsonl"))]
    logs = [r for r in rows if r.get("tokens_per_s") is not None]
    vals = [r for r in rows if "val/loss" in r]
    return _summary(logs, vals, spec["eval_steps"], mem, {"wall_s": wall, "stopped": res.stopped,
                                                          "torch": torch.__version__,
                                                          "device": _device_name(cfg)})


# ------------------------------------------------------------------------- contender: plain PyTorch

def child_ref(spec: dict) -> dict:
    import contextlib
    import math

    import torch

    from fastlm.config import from_dict
    from fastlm.models import build_model, model_config_for
    from fastlm.train.batches import load_batches
    from fastlm.train.config import TrainConfig
    from fastlm.train.distributed import init_distributed
    from fastlm.train.prepare import prepare_data
    from fastlm.train.schedule import learning_rate
    from nanogpt_ref import RefGPT

    cfg = from_dict(TrainConfig, spec["cfg"])
    info = init_distributed(cfg.device)
    device = info.device
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    batches = load_batches(cfg, prepare_data(cfg, log=lambda s: None), info)

    torch.manual_seed(cfg.seed)  # fastlm's init, copied into the reference
    mcfg = model_config_for("clm", cfg.model.size, cfg.model.overrides, vocab_size=batches.tokenizer.n_vocab)
    fl = build_model(mcfg)  # first, as the trainer does right after the seed: the same draws
    model = RefGPT(mcfg)
    model.load_fastlm_state(fl.state_dict())
    with torch.no_grad():  # same function: logits of both models on a val row, before training
        x = (batches.val[0][0] if batches.val else batches.next_micro(1)[0])[:1]
        same = float((model(x) - fl(x, kernels="torch")).abs().max())
    del fl
    model.to(device)
    torch.manual_seed(cfg.seed)
    o = cfg.optim
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and n != "wte.weight"]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and n != "wte.weight")]
    fused = {"on": True, "off": False, "auto": device.type == "cuda"}[o.fused]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, fused=fused or None)
    T, B = cfg.data.seq_len, cfg.micro_batch
    tokens_per_step = cfg.tokens_per_step or B * T
    accum = tokens_per_step // (B * T)

    @torch.no_grad()
    def evaluate() -> float:
        model.eval()
        nats = n = 0.0
        for x, y in batches.val:
            x, y = x.to(device), y.to(device)
            with autocast:
                logits = model(x)
            nats += float(torch.nn.functional.cross_entropy(
                logits.float().view(-1, logits.shape[-1]), y.view(-1), ignore_index=-100, reduction="sum"))
            n += float((y != -100).sum())
        model.train()
        return nats / n

    logs, vals, mem = [], [], {}
    t_start = t_log = time.time()
    tokens_log, step, loss_log = 0, 0, 0.0
    while True:
        last = step >= cfg.max_steps or (cfg.max_time > 0 and time.time() - t_start > cfg.max_time)
        if last or (cfg.eval_every and step % cfg.eval_every == 0):
            vals.append({"step": step, "val/loss": evaluate()})
        if last:
            break
        lr = learning_rate(step, o, cfg.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for _ in range(accum):
            x, y = batches.next_micro(B)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast:
                loss = model(x, y) / accum
            loss.backward()
        if o.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_log += tokens_per_step
        loss_log += loss.detach() * accum  # the interval's mean train loss, as fastlm's trainer logs it
        if step % cfg.log_every == 0:
            train_loss = float(loss_log) / cfg.log_every  # a sync, as nanoGPT's loss.item()
            loss_log = 0.0
            now = time.time()
            logs.append({"step": step, "train/loss": train_loss, "tokens_per_s": tokens_log / (now - t_log)})
            t_log, tokens_log = now, 0
            mem.update(_peak_memory())
            if not math.isfinite(train_loss):
                raise RuntimeError(f"reference: non-finite loss at step {step}")
    return _summary(logs, vals, spec["eval_steps"], mem, {"wall_s": time.time() - t_start,
                                                          "torch": torch.__version__,
                                                          "init_logits_max_diff": same,
                                                          "device": _device_name(cfg),
                                                          "params": sum(p.numel() for p in model.parameters())})


# ------------------------------------------------------------------ interleaved steps, one process

def step_compare(cfg_dict: dict, n: int, profile: bool) -> None:
    """Training steps of both models (same weights, same batch, AdamW + clipping) alternated in one
    process, so a noisy machine slows both alike: median ms/step, and torch.profiler's top ops."""
    import torch

    from fastlm.config import from_dict
    from fastlm.models import build_model, model_config_for
    from fastlm.tokenizer import Tokenizer
    from fastlm.train.config import TrainConfig
    from nanogpt_ref import RefGPT

    cfg = from_dict(TrainConfig, cfg_dict)
    device = torch.device("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")
    vocab = Tokenizer.from_file(cfg.data.tokenizer).n_vocab
    mcfg = model_config_for("clm", cfg.model.size, cfg.model.overrides, vocab_size=vocab)
    torch.manual_seed(cfg.seed)
    fl = build_model(mcfg)
    ref = RefGPT(mcfg)
    ref.load_fastlm_state(fl.state_dict())
    fl.to(device), ref.to(device)
    B, T = cfg.micro_batch, cfg.data.seq_len
    x = torch.randint(0, vocab, (B, T), device=device)
    y = torch.randint(0, vocab, (B, T), device=device)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else torch.autocast("cpu", enabled=False))
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4, fused=device.type == "cuda" or None)
            for k, m in (("fastlm", fl), ("torch-ref", ref))}

    def step(name):
        with autocast:
            loss = (fl(x, y, kernels=cfg.model.kernels, reduction="sum") / y.numel() if name == "fastlm"
                    else ref(x, y))
        loss.backward()
        m = fl if name == "fastlm" else ref
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opts[name].step()
        opts[name].zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    times: dict = {"fastlm": [], "torch-ref": []}
    for name in times:
        step(name), step(name)  # warm-up
    for i in range(n):
        for name in (("fastlm", "torch-ref") if i % 2 == 0 else ("torch-ref", "fastlm")):
            t0 = time.perf_counter()
            step(name)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"\ninterleaved steps ({n} each, {B} x {T} tokens, {device}): fastlm {med['fastlm']:.1f} ms, "
          f"torch-ref {med['torch-ref']:.1f} ms, fastlm/ref time {med['fastlm'] / med['torch-ref']:.3f}")
    if profile:
        from torch.profiler import profile as prof
        for name in times:
            with prof() as p:
                for _ in range(3):
                    step(name)
            print(f"\n{name}: top ops by self time (3 steps)")
            print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


# ------------------------------------------------------------------------------------------- driver

def _config(args) -> dict:
    """The TrainConfig (as a dict) both contenders run, data prepared once here."""
    from fastlm.train.config import load_train_config
    from fastlm.train.prepare import prepare_data

    d = {"task": "clm", "out": args.out, "seed": args.seed, "device": args.device, "micro_batch": args.micro_batch,
         "max_steps": 1_000_000, "max_time": args.budget_s, "eval_every": args.eval_steps,
         "eval_tokens": args.eval_tokens, "log_every": args.log_every, "sample_tokens": 8, "ckpt_every": 0,
         "keep_last": 1, "plot": False, "tensorboard": False,
         "data": {"seq_len": args.seq_len}, "model": {"size": args.size, "kernels": args.kernels},
         "optim": {"schedule": "constant", "warmup_steps": args.warmup, "lr": args.lr}}
    cfg = load_train_config(None, args.set, base=d)
    if not cfg.data.tokens:
        prepared = prepare_data(cfg, log=lambda s: print(f"  {s}", file=sys.stderr))
        cfg.data.tokens, cfg.data.val_tokens, cfg.data.tokenizer = prepared.train, prepared.val, prepared.tokenizer
    return cfg.to_dict()


def _run_child(name: str, spec: dict, out: str, threads: int) -> dict:
    path = os.path.join(out, f"bench-{name}.json")
    spec_path = os.path.join(out, f"bench-{name}-spec.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--spec", spec_path, "--result", path]
    t0 = time.time()
    cfg = spec["cfg"]
    what = (f"contender {name!r} (model {cfg['model']['size']}, {cfg['micro_batch']} x "
            f"{cfg['data']['seq_len']} tokens/step)")
    run_script(cmd, what, env=env, stream=True)  # its logs stream; ChildError with its stderr tail if it fails
    print(f"  {name}: {time.time() - t0:.1f} s (process)", file=sys.stderr)
    with open(path) as f:
        return json.load(f)


def table(res: dict, eval_steps: int) -> str:
    a, b = res["fastlm"], res["torch-ref"]
    mem_key = "cuda_mib" if "cuda_mib" in a and "cuda_mib" in b else "rss_mib"
    rows = [("tokens/s (median)", "tokens_per_s", ".0f"),
            (f"peak {'CUDA alloc' if mem_key == 'cuda_mib' else 'RSS'} MiB", mem_key, ".0f"),
            (f"train loss @ step {eval_steps}", "train_at_steps", ".4f"),
            (f"val loss @ step {eval_steps}", "val_at_steps", ".4f"),
            ("val loss @ budget", "val_final", ".4f"), ("steps @ budget", "final_step", "d")]
    lines = [f"{'':28s}{'fastlm':>12s}{'torch-ref':>12s}{'fastlm/ref':>12s}"]
    for label, key, spec in rows:
        x, y = a.get(key), b.get(key)
        ratio = f"{x / y:.3f}" if x is not None and y else "-"
        x_s, y_s = ("-" if v is None else format(v, spec) for v in (x, y))
        lines.append(f"{label:28s}{x_s:>12s}{y_s:>12s}{ratio:>12s}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="~1 minute: 20 s per contender, small rows")
    p.add_argument("--budget-s", type=float, default=60.0, help="wall-clock budget per contender (default 60)")
    p.add_argument("--eval-steps", type=int, default=50, help="evaluate every N steps (val loss @ step N)")
    p.add_argument("--eval-tokens", type=int, default=16384, help="val tokens per evaluation")
    p.add_argument("--size", default="tiny", help="GPTConfig named size (default tiny)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--warmup", type=int, default=20, help="lr warmup steps (then constant)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak lr (constant: below the trainer's 3e-3 "
                                                          "so val loss keeps falling in a budget)")
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--kernels", default="fastlm", choices=("fastlm", "torch"), help="fastlm's model.kernels")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for the contenders (0 = default)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="TrainConfig override")
    p.add_argument("--out", default=os.path.join("runs", "bench_train"), help="runs, data cache and results")
    p.add_argument("--only", choices=("fastlm", "torch-ref"), help="run one contender")
    p.add_argument("--repeats", type=int, default=1, help="runs per contender, alternating (tokens/s median)")
    p.add_argument("--steps-only", type=int, default=0, metavar="N",
                   help="instead: N training steps of each model alternated in one process (noise-robust)")
    p.add_argument("--profile", action="store_true", help="with --steps-only: torch.profiler top ops")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:  # one contender, in this subprocess
        import torch
        if os.environ.get("OMP_NUM_THREADS"):
            torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        with open(args.spec) as f:
            spec = json.load(f)
        r = (child_fastlm if args.child == "fastlm" else child_ref)(spec)
        with open(args.result + ".tmp", "w") as f:
            json.dump(r, f)
        os.replace(args.result + ".tmp", args.result)
        return 0

    if args.quick:
        args.budget_s, args.eval_steps, args.seq_len, args.micro_batch = 20.0, 20, 128, 8
        args.eval_tokens, args.warmup = 4096, 10
    os.makedirs(args.out, exist_ok=True)
    cfg = _config(args)
    if args.steps_only:
        if args.threads:
            import torch
            torch.set_num_threads(args.threads)
        step_compare(cfg, args.steps_only, args.profile)
        return 0
    names = [n for n in ("fastlm", "torch-ref") if not args.only or n == args.only]
    runs: dict = {n: [] for n in names}
    for r in range(args.repeats):  # alternate the order: a noisy neighbour hurts both alike
        for name in (names if r % 2 == 0 else names[::-1]):
            c = dict(cfg, run_name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
            runs[name].append(_run_child(name, {"cfg": c, "eval_steps": args.eval_steps}, args.out,
                                         args.threads))
    results = {}
    for name, rs in runs.items():  # the first run's figures, tokens/s and memory: median / max of runs
        results[name] = dict(rs[0], tokens_per_s=statistics.median(r["tokens_per_s"] for r in rs),
                             tokens_per_s_runs=[r["tokens_per_s"] for r in rs])
        for key in ("rss_mib", "cuda_mib"):
            if key in rs[0]:
                results[name][key] = max(r[key] for r in rs)
    m = cfg["model"]
    first = next(iter(results.values()))
    params = f", {results['torch-ref']['params'] / 1e6:.2f}M params" if "torch-ref" in results else ""
    print(f"\nbench_train: {m['size']} {m['overrides'] or ''}{params} on {first['device']}, torch "
          f"{first['torch']}, {cfg['micro_batch']} x "
          f"{cfg['data']['seq_len']} tokens/step, budget {args.budget_s:.0f} s each, kernels={m['kernels']}")
    if len(results) == 2:
        print(table(results, args.eval_steps))
    for name, r in results.items():
        print(f"{name} tokens/s per run: {', '.join(f'{t:.0f}' for t in r['tokens_per_s_runs'])}; "
              f"{r['n_intervals']} logged intervals after warm-up")
    if "torch-ref" in results:
        print(f"init check: max |logits fastlm - ref| = {results['torch-ref']['init_logits_max_diff']:.2e}")
    out = os.path.join(args.out, "bench_train.json")
    with open(out + ".tmp", "w") as f:
        json.dump({"config": cfg, "results": results}, f, indent=2)
    os.replace(out + ".tmp", out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
