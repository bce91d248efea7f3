"""Benchmark: fused linear cross-entropy (fastlm) vs PyTorch eager and F.linear_cross_entropy.

Median forward+backward time and peak extra memory per contender, with ratios to eager. CPU: each
contender runs in its own subprocess and peak memory is the ru_maxrss rise over the inputs; CUDA:
torch.cuda.max_memory_allocated over the inputs. Each contender's loss is checked against eager
before it is timed.
    python benchmarks/bench_cross_entropy.py --device cpu --sizes 4096x768x32768
    python benchmarks/bench_cross_entropy.py --device cuda --dtype bfloat16 --quick
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import _setup  # noqa: E402,F401  (fastlm: the built checkout, else the installed package)
from fastlm.ops import linear_cross_entropy  # noqa: E402

CONTENDERS = ["eager", "torch_lce", "torch_lce_chunked", "fastlm"]
# fastlm with the CE chunk kernel v1 / v3 (v2 is the default)
CUDA_CONTENDERS = ["fastlm_ce1", "fastlm_ce3"]


def make_fn(name):
    if name == "eager":
        return lambda x, w, t: F.cross_entropy(F.linear(x, w).float(), t)
    if name == "fastlm":
        return lambda x, w, t: linear_cross_entropy(x, w, t)
    if name.startswith("fastlm_ce"):  # fastlm with another CE chunk kernel version
        from fastlm.ops import cross_entropy as ce
        version = int(name[len("fastlm_ce"):])

        def other(x, w, t):
            old, ce.KERNEL_VERSION = ce.KERNEL_VERSION, version
            try:
                return linear_cross_entropy(x, w, t)
            finally:
                ce.KERNEL_VERSION = old
        return other
    if not hasattr(F, "linear_cross_entropy"):
        return None
    if name == "torch_lce":
        return lambda x, w, t: F.linear_cross_entropy(x, w, t)
    opts = torch.nn.LinearCrossEntropyOptions() if hasattr(torch.nn, "LinearCrossEntropyOptions") else None
    if opts is None:
        return None
    return lambda x, w, t: F.linear_cross_entropy(x, w, t, options=opts)


def run_one(name, n, d, v, dtype, device, reps):
    """Times one contender; returns dict(time_ms, peak_mb, loss) or None if unavailable."""
    fn = make_fn(name)
    if fn is None:
        return None
    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    x = (torch.randn(n, d, device=device) * 0.5).to(dt).requires_grad_()
    w = (torch.randn(v, d, device=device) * 0.02).to(dt).requires_grad_()
    t = torch.randint(0, v, (n,), device=device)
    t[::11] = -100
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times, loss = [], None
    for i in range(reps + 1):  # first run is warm-up
        x.grad = w.grad = None
        sync()
        t0 = time.perf_counter()
        out = fn(x, w, t)
        out.backward()
        sync()
        if i > 0:
            times.append((time.perf_counter() - t0) * 1e3)
        loss = float(out.detach())
    if device == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    return dict(time_ms=statistics.median(times), peak_mb=peak, loss=loss)


def bench_chunk_kernel(n, v, dtype, reps):
    """The CUDA chunk kernel alone (each version) on an n x v logits buffer: ms and GB/s of
    v1/v2's traffic (forward + gradient: 2 reads + 1 write of the buffer; v3 reads it once, so
    its figure is that traffic over its time, for comparison)."""
    from fastlm.ops import _dispatch
    from fastlm.ops.cross_entropy import _run_device_kernel

    dt = getattr(torch, dtype)
    z = (torch.randn(n, v, device="cuda") * 2).to(dt)
    t = torch.randint(0, v, (n,), device="cuda")
    loss = torch.empty(n, device="cuda")
    lse = torch.empty(n, device="cuda")
    cu, stream = _dispatch.cuda_module(), _dispatch.stream_handle(z.device)
    out = {}
    for version in (1, 2, 3):
        ms = []
        for i in range(reps + 1):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            _run_device_kernel(cu, stream, z, t, loss, lse, None, 1.0 / n, -100, 0.0, 0.0, 0.0,
                               True, version=version)
            end.record()
            torch.cuda.synchronize()
            if i > 0:
                ms.append(start.elapsed_time(end))
        med = statistics.median(ms)
        out[version] = dict(ms=med, gbps=3 * z.numel() * z.element_size() / med / 1e6)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--sizes", default="", help="comma list of NxDxV")
    ap.add_argument("--reps", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default="", help="append result rows here")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:  # one contender in a fresh process (CPU peak memory)
        name, n, d, v = a.child.split(":")
        r = run_one(name, int(n), int(d), int(v), a.dtype, a.device, a.reps)
        print(json.dumps(r))
        return
    if a.device == "cuda" and not torch.cuda.is_available():
        print("bench_cross_entropy: --device cuda skipped, no CUDA device (use --device cpu)")
        return
    if a.sizes:
        sizes = [tuple(int(s) for s in z.split("x")) for z in a.sizes.split(",")]
    elif a.device == "cuda":
        sizes = [(8192, 768, 50304)] if a.quick else [(4096, 768, 32768), (8192, 768, 50304),
                                                      (16384, 2048, 128256)]
    else:
        sizes = [(4096, 768, 32768)] if a.quick else [(4096, 768, 32768), (4096, 768, 50304),
                                                      (8192, 768, 32768), (8192, 768, 50304)]
    reps = a.reps or (10 if a.device == "cuda" else 3)
    rows, wrong = [], []
    for n, d, v in sizes:
        res = {}
        names = CONTENDERS + (CUDA_CONTENDERS if a.device == "cuda" else [])
        for name in names:
            if a.device == "cpu":
                out = subprocess.run(
                    [sys.executable, __file__, "--device", "cpu", "--dtype", a.dtype, "--reps",
                     str(reps), "--child", f"{name}:{n}:{d}:{v}"],
                    capture_output=True, text=True)
                if out.returncode != 0:
                    print(out.stderr[-2000:], file=sys.stderr)
                    res[name] = None
                    continue
                res[name] = json.loads(out.stdout.strip().splitlines()[-1])
            else:
                res[name] = run_one(name, n, d, v, a.dtype, a.device, reps)
                torch.cuda.empty_cache()
        e = res["eager"]
        for name in names:
            r = res[name]
            if r is None:
                rows.append((f"{n}x{d}x{v}", name, None))
                continue
            if abs(r["loss"] - e["loss"]) > 2e-2 * max(1.0, abs(e["loss"])):
                # a wrong contender is reported (and fails the run), never timed as a win
                print(f"{n}x{d}x{v} {name}: loss {r['loss']} != eager {e['loss']}", file=sys.stderr)
                wrong.append(name)
                rows.append((f"{n}x{d}x{v}", name, None))
                continue
            rows.append((f"{n}x{d}x{v}", name, r | dict(speedup=e["time_ms"] / r["time_ms"],
                                                       mem_ratio=r["peak_mb"] / max(e["peak_mb"], 1e-9))))
    dev = torch.cuda.get_device_name() if a.device == "cuda" else f"cpu x{os.cpu_count()}"
    print(f"\nlinear cross-entropy fwd+bwd, {a.device} {a.dtype} ({dev}), median of {reps}")
    print(f"{'N x d x V':>18} {'contender':>18} {'ms':>9} {'peak MB':>9} {'speedup':>8} {'mem/eager':>9}")
    for size, name, r in rows:
        if r is None:
            print(f"{size:>18} {name:>18} {'n/a':>9}")
        else:
            print(f"{size:>18} {name:>18} {r['time_ms']:9.2f} {r['peak_mb']:9.1f} "
                  f"{r['speedup']:7.2f}x {r['mem_ratio']:9.3f}")
    kernel_rows = []
    if a.device == "cuda":  # where the op's time goes: the chunk kernel alone, per version
        print(f"\nCE chunk kernel alone (N x V logits, {a.dtype}; GB/s of 2 reads + 1 write, "
              "v3's included)")
        for n, d, v in sizes:
            try:
                k = bench_chunk_kernel(n, v, a.dtype, reps)
            except Exception as e:  # never lose the table above to this extra
                print(f"{n}x{v}: kernel timing failed: {e!r}")
                continue
            kernel_rows.append((f"{n}x{v}", k))
            print(f"{n:>8}x{v:<8} " + "  ".join(
                f"v{ver} {r['ms']:8.3f} ms {r['gbps']:7.0f} GB/s" for ver, r in k.items()))
    if a.json:
        with open(a.json, "a") as f:
            for size, name, r in rows:
                f.write(json.dumps(dict(bench="ce", device=dev, dtype=a.dtype, size=size,
                                        contender=name, **(r or {}))) + "\n")
            for size, k in kernel_rows:
                f.write(json.dumps(dict(bench="ce_kernel", device=dev, dtype=a.dtype, size=size,
                                        versions={str(ver): r for ver, r in k.items()})) + "\n")
    if wrong:
        raise SystemExit(f"wrong loss (not timed): {', '.join(wrong)}")


if __name__ == "__main__":
    main()
