"""Benchmark: fastlm flash attention vs F.scaled_dot_product_attention (flash backend), CUDA.

Each configuration is validated against SDPA before timing; reports median forward+backward
time (CUDA events), TFLOP/s (4*B*H*T^2*D fwd, x2.5 for bwd, halved when causal), the ratio, and
the peak memory of one forward+backward above the inputs (torch.cuda.max_memory_allocated).
    python benchmarks/bench_attention.py --quick
"""
import argparse
import json
import statistics
import sys

import torch
import torch.nn.functional as F

import _setup  # noqa: E402,F401  (fastlm: the built checkout, else the installed package)
from fastlm.ops import attention  # noqa: E402
attn_mod = sys.modules["fastlm.ops.attention"]  # the module (fastlm.ops.attention is the function)


def sdpa_flash(q, k, v, causal):
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    except (ImportError, RuntimeError):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def time_fb(fn, q, k, v, g, reps, backward=True):
    def step():
        out = fn(q, k, v)
        if backward:
            out.backward(g)
    for _ in range(3):
        step()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        step()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def peak_mb(fn, q, k, v, g):
    """Peak CUDA memory of one forward+backward above what the inputs hold (MB; q/k/v gradients
    included: both contenders make the same three)."""
    for x in (q, k, v):
        x.grad = None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn(q, k, v).backward(g)
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    for x in (q, k, v):
        x.grad = None
    return peak


def print_row(r):
    print(f"{r['D']:>4} {r['T']:>5} {str(r['causal']):>6} {r['ms']:10.3f} {r['tflops']:8.1f} "
          f"{r['sdpa_ms']:8.3f} {r['sdpa_tflops']:8.1f} {r['ratio']:9.2f}x "
          f"{r['fwd_ms']:7.3f} {r['sdpa_fwd_ms']:8.3f} {r['mem_mb']:8.1f} {r['sdpa_mem_mb']:8.1f} "
          f"{r['mem_ratio']:6.2f}  "
          + " ".join(f"v{k}={v['ms']:.3f} (fwd {v['fwd_ms']:.3f})"
                     for k, v in r["versions_ms"].items()), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=16384, help="B*T")
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--json", default="")
    ap.add_argument("--versions", default="", help="comma list of kernel versions also timed")
    a = ap.parse_args()
    if not torch.cuda.is_available():  # the kernels and the SDPA flash backend are CUDA-only
        print("bench_attention: skipped, no CUDA device (CUDA-only benchmark)")
        return
    dt = getattr(torch, a.dtype)
    seqs = [1024, 4096] if a.quick else [1024, 2048, 4096, 8192]
    name = torch.cuda.get_device_name()
    here = torch.device("cuda", torch.cuda.current_device())
    label = (f"v{attn_mod.KERNEL_VERSION}" if attn_mod.KERNEL_VERSION else "default: " + ", ".join(
        f"v{attn_mod.kernel_version_for(d, here)} at D={d}" for d in attn_mod.DEFAULT_VERSION_BY_HEAD_DIM))
    print(f"\nattention fwd+bwd {a.dtype} (fastlm = kernel {label}), {a.tokens} tokens, "
          f"{a.heads} heads ({name}), median of {a.reps}")
    print(f"{'D':>4} {'T':>5} {'causal':>6} {'fastlm ms':>10} {'TFLOP/s':>8} {'sdpa ms':>8} "
          f"{'TFLOP/s':>8} {'speed/sdpa':>10} {'fwd ms':>7} {'sdpa fwd':>8} {'peak MB':>8} {'sdpa MB':>8} "
          f"{'mem/sdpa':>6}  other versions ms")
    rows = []
    for d in (64, 128):
        for t in seqs:
            for causal in (False, True):
                b = max(1, a.tokens // t)
                gen = torch.Generator(device="cuda").manual_seed(t + d)
                q, k, v = (torch.randn(b, a.heads, t, d, device="cuda", generator=gen, dtype=dt)
                           .requires_grad_() for _ in range(3))
                g = torch.randn_like(q)
                ours = lambda q, k, v: attention(q, k, v, is_causal=causal)  # noqa: E731
                ref = lambda q, k, v: sdpa_flash(q, k, v, causal)  # noqa: E731
                with torch.no_grad():
                    err = float((ours(q, k, v).float() - ref(q, k, v).float()).norm()
                                / ref(q, k, v).float().norm())
                if not err < 2e-2:
                    raise SystemExit(f"T={t} D={d} causal={causal}: rel err vs SDPA {err:.3e}")
                flops = 4 * b * a.heads * t * t * d * 3.5 * (0.5 if causal else 1.0)
                t_ours = time_fb(ours, q, k, v, g, a.reps)
                t_ref = time_fb(ref, q, k, v, g, a.reps)
                m_ours, m_ref = peak_mb(ours, q, k, v, g), peak_mb(ref, q, k, v, g)
                with torch.no_grad():
                    f_ours = time_fb(ours, q, k, v, g, a.reps, backward=False)
                    f_ref = time_fb(ref, q, k, v, g, a.reps, backward=False)
                default = attn_mod.KERNEL_VERSION
                vers = {}
                for ver in [int(x) for x in a.versions.split(",") if x]:
                    attn_mod.KERNEL_VERSION = ver
                    with torch.no_grad():
                        e = float((ours(q, k, v).float() - ref(q, k, v).float()).norm()
                                  / ref(q, k, v).float().norm())
                    if e < 2e-2:
                        with torch.no_grad():
                            fwd_ms = time_fb(ours, q, k, v, g, a.reps, backward=False)
                        vers[ver] = dict(ms=time_fb(ours, q, k, v, g, a.reps), fwd_ms=fwd_ms)
                    else:  # a wrong kernel is reported, never timed
                        vers[ver] = dict(ms=float("nan"), fwd_ms=float("nan"), err=e)
                attn_mod.KERNEL_VERSION = default
                rows.append(dict(D=d, T=t, B=b, causal=causal, ms=t_ours, sdpa_ms=t_ref,
                                 tflops=flops / t_ours / 1e9, sdpa_tflops=flops / t_ref / 1e9,
                                 ratio=t_ref / t_ours, err=err, fwd_ms=f_ours, sdpa_fwd_ms=f_ref,
                                 mem_mb=m_ours, sdpa_mem_mb=m_ref, mem_ratio=m_ours / max(m_ref, 1e-9),
                                 versions_ms=vers, version=attn_mod.kernel_version_for(d, here)))
                print_row(rows[-1])
                del q, k, v, g
                torch.cuda.empty_cache()
    if a.json:
        with open(a.json, "a") as f:
            for r in rows:
                f.write(json.dumps(dict(bench="attention", device=name, dtype=a.dtype, **r)) + "\n")


if __name__ == "__main__":
    main()
