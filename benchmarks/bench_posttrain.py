"""Benchmark: the post-training chain base -> SFT (packing vs padding) -> reward model, DPO, PPO, GRPO, RLOO
on the built-in tasks, with throughput, memory and held-out exact match per stage.

Every stage is one `fastlm.train.trainer.run` call with its own `TrainConfig` (task sft/reward/dpo/ppo/
grpo/rloo), in its own spawned process, so its peak memory is that process's alone (CPU: ru_maxrss growth
over the process before the run; CUDA: max_memory_allocated), read after the run (training, its final
evaluation and checkpoint). The chain:

- base: a *random-init* tiny GPT (``model.size`` + overrides, seeded as ``post.init_from=none`` builds it) and
  a word-level tokenizer trained on the tasks' texts (each task word one token, as the tests do). No
  pretraining on the built-in corpus (not wired here: it would train its own 4096-id tokenizer and take
  minutes more), so the base row is what a random model scores: 0.
- sft: the same steps twice from the base, ``post.packing`` true and false. Reported: real (non-padding)
  input tokens/s (median over logged intervals, the first `WARMUP_LOGS` dropped), real tokens per step,
  padding share of row slots (``data/padding_fraction``), peak memory, final val loss. The packed run is
  the one the later stages start from.
- reward: a reward model from the SFT checkpoint on the tasks' preference pairs; held-out pair accuracy and
  margin before (step 0) and after.
- dpo: from the SFT checkpoint on the same pairs; held-out implicit-reward margin and accuracy.
- ppo / grpo / rloo: from the SFT checkpoint with the tasks' verifiable reward (``post.reward_model=task``);
  rollout tokens/s (response tokens / sampling time) and step time (rollout + scoring + updates), medians
  over steps after the first `WARMUP_LOGS`; sampled train reward, mean of the first vs the last quarter of
  steps. ppo samples each prompt once, so it gets ``prompts x samples`` prompts: the same rollouts per step.
- exact match: every final checkpoint (and the base) answers the same held-out problems of every task
  greedily (`fastlm.posttrain.tasks.exact_match`): accuracy per task, overall, and mean task reward.

Settings (tried on 2 CPU cores; each stage's TrainConfig is in its run dir's config.yaml with ``--out``): a
2-layer d_model 128 GPT, rows of 64 tokens, 16 rows per step, AdamW with a constant lr after 10 warmup steps
and no weight decay; SFT and reward lr 1e-3 (3e-3 left SFT on a plateau: 0.01 exact match after 600 steps);
DPO 5e-5 (2e-4 raised the margin but cut exact match 0.51 -> 0.34); RL 1e-4 with kl_coef 0.01 (5e-4 cut it
0.51 -> 0.1-0.2 in 30 steps), 16 prompts x 4 samples per step, 2 epochs x 2 minibatches, temperature 1.
The numbers come from one seed: the packed and padded SFT runs see different examples per step, and on
2 shared cores the throughput figures move by tens of percent from run to run (note ``uptime``).

    python benchmarks/bench_posttrain.py --quick                 # a few minutes on 2 CPU cores
    python benchmarks/bench_posttrain.py                         # fuller: 4 tasks, longer stages
    python benchmarks/bench_posttrain.py --quick --json out.json --out runs/bench_post   # keep runs
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time

import _setup  # noqa: E402,F401  (fastlm: the built checkout, else the installed package)
from _child import run_forked  # noqa: E402
WARMUP_LOGS = 2  # logged intervals dropped before a median (allocator warmup, first-step caches)

PRESETS = {  # quick: minutes on 2 CPU cores; full: the README's fuller run
    "quick": dict(tasks=["copy", "reverse"], d_model=128, n_layer=2, sft_steps=1000, reward_steps=300,
                  dpo_steps=100, rl_steps=60, prompts=16, samples=4, eval_n=100, task_examples=2000,
                  rl_algos=["ppo", "grpo", "rloo"]),
    "full": dict(tasks=["copy", "reverse", "sort", "add"], d_model=128, n_layer=2, sft_steps=3000,
                 reward_steps=800, dpo_steps=300, rl_steps=150, prompts=16, samples=4, eval_n=200,
                 task_examples=4000, rl_algos=["ppo", "grpo", "rloo"]),
}


# ----------------------------------------------------------------------------------------- config

def model_overrides(a: argparse.Namespace) -> dict:
    return {"n_layer": a.n_layer, "n_head": 4, "d_model": a.d_model, "max_seq_len": a.seq_len}


def base_config(a: argparse.Namespace, task: str, run_name: str, steps: int, **post) -> dict:
    """The TrainConfig dict of one stage (the shared model/data settings + the stage's own)."""
    return {"task": task, "out": a.out, "run_name": run_name, "seed": a.seed, "device": a.device,
            "micro_batch": a.micro_batch, "max_steps": steps, "eval_every": 0, "ckpt_every": 0, "keep_last": 1,
            "log_every": a.log_every, "sample_tokens": 16, "plot": False, "spike_factor": 1e9,
            "data": {"tokenizer": a.tokenizer, "seq_len": a.seq_len},
            "model": {"size": "tiny", "overrides": model_overrides(a), "kernels": a.kernels},
            "optim": {"lr": 1e-3, "warmup_steps": 10, "schedule": "constant", "weight_decay": 0.0},
            "post": {"tasks": list(a.tasks), "task_examples": a.task_examples, "eval_examples": a.eval_n,
                     "max_new_tokens": a.max_new_tokens, **post}}


def stage_configs(a: argparse.Namespace, sft_ckpt: str = "") -> dict[str, dict]:
    """name -> config dict. The sft ones start from the base (init none); the rest from ``sft_ckpt``."""
    cfgs = {
        "sft-packed": base_config(a, "sft", "sft-packed", a.sft_steps, init_from="none", packing=True),
        "sft-padded": base_config(a, "sft", "sft-padded", a.sft_steps, init_from="none", packing=False),
    }
    if not sft_ckpt:
        return cfgs
    # evaluate at step 0 and at the end: the held-out pair metrics before and after
    cfgs["reward"] = {**base_config(a, "reward", "reward", a.reward_steps, init_from=sft_ckpt),
                      "eval_every": a.reward_steps}
    cfgs["dpo"] = {**base_config(a, "dpo", "dpo", a.dpo_steps, init_from=sft_ckpt), "eval_every": a.dpo_steps}
    cfgs["dpo"]["optim"] = {**cfgs["dpo"]["optim"], "lr": 5e-5}  # small: keeps the answers
    for algo in a.rl_algos:
        prompts = a.prompts * a.samples if algo == "ppo" else a.prompts  # same samples per step
        c = base_config(a, algo, algo, a.rl_steps, init_from=sft_ckpt, reward_model="task",
                        prompts_per_step=prompts, samples_per_prompt=a.samples, kl_coef=0.01)
        c["log_every"] = 1
        c["optim"] = {**c["optim"], "lr": 1e-4, "warmup_steps": 0}  # 5e-4 lost exact match
        cfgs[algo] = c
    return cfgs


# ----------------------------------------------------------------------------------------- stages

def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_stage(cfg_dict: dict, threads: int) -> dict:
    """One training run (in a spawned child): the metrics rows, result and peak memory."""
    import torch
    if threads:
        torch.set_num_threads(threads)
    from fastlm.config import from_dict
    from fastlm.train.config import TrainConfig
    from fastlm.train.trainer import run
    cfg = from_dict(TrainConfig, cfg_dict)
    cuda = torch.cuda.is_available() and cfg.device != "cpu"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rss0 = _rss_mib()
    t0 = time.time()
    res = run(cfg, console=False)
    wall = time.time() - t0
    mem = {"rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0}  # Linux: KiB
    if cuda:
        mem["cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    with open(os.path.join(res.run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {"run_dir": res.run_dir, "checkpoint": res.checkpoint, "steps": res.step, "wall_s": wall,
            "mem": mem, "rows": rows}


def evaluate_models(a_dict: dict, checkpoints: dict[str, str], threads: int) -> dict:
    """Held-out greedy exact match of the base (random init) and each checkpoint (in a spawned child)."""
    import torch
    if threads:
        torch.set_num_threads(threads)
    from fastlm.models import build_model, model_config_for
    from fastlm.posttrain.tasks import exact_match, get_task
    from fastlm.tokenizer import Tokenizer
    from fastlm.train.checkpoint import load_model
    a = argparse.Namespace(**a_dict)
    device = torch.device("cuda" if a.device != "cpu" and torch.cuda.is_available() else "cpu")
    examples = [ex for t in a.tasks for ex in get_task(t).examples("val", a.eval_n, a.seed)]
    tok = Tokenizer.from_file(a.tokenizer)
    torch.manual_seed(a.seed)  # as post.init_from=none builds the SFT start
    base = build_model(model_config_for("clm", "tiny", model_overrides(a), vocab_size=tok.n_vocab))
    out = {}
    for name, ckpt in [("base", None), *checkpoints.items()]:
        model, mtok = (base, tok) if ckpt is None else load_model(ckpt)[:2]
        r = exact_match(model.to(device), mtok, examples, max_new_tokens=a.max_new_tokens, device=device,
                        batch=64, kernels=a.kernels)
        out[name] = {"accuracy": r["accuracy"], "reward": r["reward"], "n": r["n"],
                     "per_task": {t: v["accuracy"] for t, v in r["per_task"].items()}, "samples": r["samples"][:2]}
    return out


def in_child(what: str, fn, *args):
    """``fn(*args)`` in a fresh spawned process (its own peak memory, no state carried between stages).

    ChildError naming `what` if it raises (with its traceback) or the process dies: never a hang."""
    return run_forked(fn, what, *args, method="spawn")


def make_tokenizer(path: str) -> None:
    """A word-level BPE on the tasks' texts with the chat specials (task words one token each)."""
    from fastlm.posttrain.tasks import get_task
    from fastlm.tokenizer import Tokenizer
    from fastlm.tokenizer.chat_template import CHAT_SPECIALS
    texts = [e.prompt + "\n" + e.answer for n in ("copy", "reverse", "sort", "add")
             for e in get_task(n).examples("train", 300, 0)]
    Tokenizer.train_from_iterator(texts, 320, special_tokens={s: 320 + i for i, s in enumerate(CHAT_SPECIALS)}
                                  ).save(path)


# ----------------------------------------------------------------------------------------- summaries

def _median(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    steady = xs[WARMUP_LOGS:] or xs
    return statistics.median(steady) if steady else None


def _mean(xs: list) -> float | None:
    return sum(xs) / len(xs) if xs else None


def summarize(name: str, r: dict) -> dict:
    rows = r["rows"]
    train = [x for x in rows if "train/loss" in x or "reward/mean" in x]
    first = next((x for x in rows if x["step"] == 0), {})
    last = train[-1] if train else {}
    vals = [x for x in rows if any(k.startswith("val/") for k in x)]
    s = {"steps": r["steps"], "wall_s": r["wall_s"], "peak_mib": r["mem"].get("cuda_mib", r["mem"]["rss_mib"])}
    if name.startswith("sft"):
        s.update(tokens_per_s=_median([x.get("tokens_per_s") for x in train]),
                 tokens_per_step=last.get("tokens", 0) / max(r["steps"], 1),
                 padding=first.get("data/padding_fraction"), train_loss=last.get("train/loss"),
                 val_loss=vals[-1].get("val/loss") if vals else None)
    elif name in ("reward", "dpo"):
        key = "val/accuracy" if name == "reward" else "val/rewards/accuracy"
        mkey = "val/margin" if name == "reward" else "val/rewards/margin"
        s.update(tokens_per_s=_median([x.get("tokens_per_s") for x in train]),
                 acc_start=vals[0].get(key) if vals else None, acc_end=vals[-1].get(key) if vals else None,
                 margin_start=vals[0].get(mkey) if vals else None, margin_end=vals[-1].get(mkey) if vals else None,
                 train_loss=last.get("train/loss"))
    else:
        rewards = [x["reward/mean"] for x in train]
        q = max(1, len(rewards) // 4)
        s.update(rollout_tokens_per_s=_median([x.get("tokens_per_s") for x in train]),
                 step_s=_median([x.get("step_s") for x in train]),
                 rollout_s=_median([x.get("rollout_s") for x in train]),
                 reward_start=_mean(rewards[:q]), reward_end=_mean(rewards[-q:]),
                 kl_end=last.get("kl"), response_len=_median([x.get("response_len") for x in train]))
    return s


def _f(x, fmt="{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def table(result: dict) -> str:
    st, ev, tasks = result["stages"], result["exact_match"], result["args"]["tasks"]
    lines = ["SFT (same steps, same model)  tok/s(real)  tok/step  padding  peak MiB  val loss  wall s"]
    for name in ("sft-packed", "sft-padded"):
        s = st[name]
        lines.append(f"  {name:<28}{_f(s['tokens_per_s'], '{:>11.0f}')}  {s['tokens_per_step']:>8.0f}  "
                     f"{_f(s['padding'], '{:>7.1%}')}  {s['peak_mib']:>8.0f}  {_f(s['val_loss'], '{:>8.3f}')}  "
                     f"{s['wall_s']:>6.1f}")
    for name, label in (("reward", "reward model (held-out pairs)"), ("dpo", "dpo (held-out implicit reward)")):
        if name in st:
            s = st[name]
            lines.append(f"{label}: accuracy {_f(s['acc_start'])} -> {_f(s['acc_end'])}, margin "
                         f"{_f(s['margin_start'])} -> {_f(s['margin_end'])}; {_f(s['tokens_per_s'], '{:.0f}')} tok/s, "
                         f"peak {s['peak_mib']:.0f} MiB, {s['wall_s']:.1f} s")
    rl = [n for n in ("ppo", "grpo", "rloo") if n in st]
    if rl:
        lines.append("RL (task reward)  rollout tok/s  step s  rollout s  resp len  reward first->last quarter  "
                     "peak MiB  wall s")
        for n in rl:
            s = st[n]
            lines.append(f"  {n:<16}{_f(s['rollout_tokens_per_s'], '{:>13.0f}')}  {_f(s['step_s'], '{:>6.2f}')}  "
                         f"{_f(s['rollout_s'], '{:>9.2f}')}  {_f(s['response_len'], '{:>8.1f}')}  "
                         f"{_f(s['reward_start'], '{:>14.3f}')} -> {_f(s['reward_end'], '{:.3f}')}  "
                         f"{s['peak_mib']:>8.0f}  {s['wall_s']:>6.1f}")
    n = next(iter(ev.values()))["n"] // max(len(tasks), 1)
    lines.append(f"held-out exact match ({n} problems per task, greedy)  "
                 + "  ".join(f"{t:>7}" for t in tasks) + "      all  reward")
    for name, r in ev.items():
        label = "base (random init)" if name == "base" else name
        lines.append(f"  {label:<50}" + "  ".join(f"{r['per_task'].get(t, 0):>7.2f}" for t in tasks)
                     + f"  {r['accuracy']:>7.2f}  {r['reward']:>6.2f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few minutes on 2 CPU cores (2 tasks, short stages)")
    p.add_argument("--tasks", help="comma-separated built-in tasks (copy,reverse,sort,add)")
    p.add_argument("--sft-steps", type=int)
    p.add_argument("--reward-steps", type=int)
    p.add_argument("--dpo-steps", type=int)
    p.add_argument("--rl-steps", type=int)
    p.add_argument("--rl", help="comma-separated RL algorithms (ppo,grpo,rloo)")
    p.add_argument("--eval-n", type=int, help="held-out problems per task")
    p.add_argument("--d-model", type=int)
    p.add_argument("--n-layer", type=int)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--kernels", default="fastlm", choices=("fastlm", "torch"))
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per stage (default 1: shared cores; 0 = torch's default)")
    p.add_argument("--out", help="keep the runs here (default: a temporary dir, removed)")
    p.add_argument("--json", help="write the results (stages, exact match, args, machine) here")
    a = p.parse_args(argv)
    preset = PRESETS["quick" if a.quick else "full"]
    for k, v in preset.items():
        if getattr(a, k, None) is None:
            setattr(a, k, v)
    if isinstance(a.tasks, str):
        a.tasks = [t for t in a.tasks.split(",") if t]
    a.rl_algos = [t for t in a.rl.split(",") if t] if a.rl else preset["rl_algos"]
    for k in ("samples", "prompts", "task_examples"):
        setattr(a, k, preset[k])

    tmp = None if a.out else tempfile.mkdtemp(prefix="bench_posttrain_")
    a.out = os.path.abspath(a.out or tmp)
    os.makedirs(a.out, exist_ok=True)
    a.tokenizer = os.path.join(a.out, "tasks_tok.fastlm")
    t_all = time.time()
    try:
        if not os.path.exists(a.tokenizer):
            make_tokenizer(a.tokenizer)
        stages, raw = {}, {}
        for name, cfg in stage_configs(a).items():
            print(f"[{time.time() - t_all:6.1f}s] {name} ...", flush=True)
            raw[name] = in_child(f"stage {name!r}", run_stage, cfg, a.threads)
            stages[name] = summarize(name, raw[name])
        sft_ckpt = raw["sft-packed"]["checkpoint"]
        for name, cfg in stage_configs(a, sft_ckpt).items():
            if name in stages:
                continue
            print(f"[{time.time() - t_all:6.1f}s] {name} ...", flush=True)
            raw[name] = in_child(f"stage {name!r}", run_stage, cfg, a.threads)
            stages[name] = summarize(name, raw[name])
        print(f"[{time.time() - t_all:6.1f}s] held-out exact match ...", flush=True)
        ckpts = {n: raw[n]["checkpoint"] for n in ("sft-packed", "sft-padded", "dpo", *a.rl_algos) if n in raw}
        ev = in_child("held-out exact match", evaluate_models, vars(a), ckpts, a.threads)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    import torch
    machine = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
               "cpus": os.cpu_count(), "device": torch.cuda.get_device_name() if a.device != "cpu"
               and torch.cuda.is_available() else "cpu", "load_avg": os.getloadavg(),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    result = {"args": {k: v for k, v in vars(a).items() if k not in ("out", "tokenizer")}, "machine": machine,
              "stages": stages, "exact_match": ev, "total_s": time.time() - t_all}
    print()
    print(table(result))
    print(f"\n{machine['device']}, {machine['cpus']} CPUs, load {', '.join(f'{x:.1f}' for x in machine['load_avg'])}, "
          f"torch {machine['torch']}, {machine['date']}; total {result['total_s']:.0f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
