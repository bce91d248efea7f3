"""How sensitive is the CUDA emulator? Deletes each __syncthreads() / cp_async_wait<N>() /
wgmma_wait<N>() / wgmma_fence() of a kernel file, one at a time, builds fastlm._cuda_emu from the mutated source (g++, as CMake does)
and runs every attention kernel version on two shapes against the float64 reference. A deletion
that changes no result is either redundant or a hazard the emulator misses: read the line.

    python tools/emu_barrier_sweep.py [csrc/kernels/attention.cu]   # ~40 sites, ~80 min on 2 cores
    python tools/emu_barrier_sweep.py --versions 7 --kernel _v7    # v7's sites, v7 runs only
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SITE = re.compile(r"(if constexpr \(VER >= \d\) )?"
                  r"(__syncthreads\(\)|cp_async_wait<\d>\(\)|wgmma_wait<\d>\(\)|wgmma_fence\(\));")

CHECK = r"""
import sys
sys.path[:0] = [sys.argv[1], sys.argv[2] + "/tests", sys.argv[2] + "/python"]
import torch, _cuda_emu as emu
from reference_ops import attention_ref

def st(t): return (t.stride(0), t.stride(1), t.stride(2))
def rel(a, b): return float((a.double() - b).norm() / b.norm())
failed = []
for ver in [int(v) for v in sys.argv[3].split(",")]:
    for (hq, hkv, t, d, causal) in [(2, 1, 200, 64, True), (2, 1, 150, 128, False)]:
        g = torch.Generator().manual_seed(0)
        q, k, v, do = (torch.randn(1, h, t, d, generator=g).bfloat16() for h in (hq, hkv, hkv, hq))
        o, lse = torch.empty_like(q), torch.empty(1, hq, t)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        acc, delta = torch.empty(1, hq, t, d), torch.empty(1, hq, t)
        sz, strides = (1, hq, hkv, t, t, d), (st(q), st(k), st(v), st(do))
        try:
            emu.attention_forward(q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(),
                                  lse.data_ptr(), sz, strides, d ** -0.5, causal, 1, ver, 0)
            emu.attention_backward(do.data_ptr(), q.data_ptr(), k.data_ptr(), v.data_ptr(),
                                   o.data_ptr(), lse.data_ptr(), dq.data_ptr(), dk.data_ptr(),
                                   dv.data_ptr(), acc.data_ptr(), delta.data_ptr(), sz, strides,
                                   d ** -0.5, causal, 1, ver, 0)
        except Exception as e:
            failed.append(f"v{ver}: error ({str(e).split('emulator: ')[-1][:50]})")
            continue
        qr, kr, vr = (x.double().requires_grad_() for x in (q, k, v))
        ref = attention_ref(qr, kr, vr, is_causal=causal)
        (ref * do.double()).sum().backward()
        errs = (rel(o, ref.detach()), rel(dq, qr.grad), rel(dk, kr.grad), rel(dv, vr.grad))
        if not all(e < 1.5e-2 for e in errs):  # NaN (a poisoned read) fails too
            failed.append(f"v{ver}: wrong")
print("caught: " + ", ".join(sorted(set(failed))) if failed else "NOT CAUGHT")
"""


def build(src_root: str, out: str) -> None:
    pyinc = subprocess.check_output([sys.executable, "-m", "pybind11", "--includes"], text=True)
    flags = ["-std=c++17", "-O1", "-fPIC", "-fno-strict-aliasing", "-w", "-DFASTLM_CUDA_EMU",
             f"-I{src_root}/csrc", *pyinc.split()]
    objs = []
    for f in sorted(os.listdir(f"{src_root}/csrc/emu")):
        if f.endswith(".cpp"):
            objs.append(f"{out}/{f}.o")
            subprocess.run(["g++", *flags, "-c", f"{src_root}/csrc/emu/{f}", "-o", objs[-1]],
                           check=True)
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    subprocess.run(["g++", "-shared", "-o", f"{out}/_cuda_emu{suffix}", *objs], check=True)


def kernel_lines(lines, name):
    """Line numbers (0-based) inside the kernels whose name contains `name` (to the closing
    brace at column 0)."""
    inside, out = False, set()
    for i, line in enumerate(lines):
        if line.startswith("__global__") and name in line:
            inside = True
        if inside:
            out.add(i)
            if line == "}":
                inside = False
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("target", nargs="?", default="csrc/kernels/attention.cu")
    ap.add_argument("--versions", default="1,2,3,4,5,6,7", help="kernel versions run per site")
    ap.add_argument("--kernel", default="", help="only sites in kernels whose name has this")
    a = ap.parse_args()
    lines = open(os.path.join(REPO, a.target)).read().split("\n")
    keep = kernel_lines(lines, a.kernel) if a.kernel else set(range(len(lines)))
    sites = [i for i, line in enumerate(lines)
             if SITE.search(line) and not line.strip().startswith("//") and i in keep]
    print(f"{len(sites)} barrier / wait / fence sites in {a.target}", flush=True)
    caught = 0
    for i in sites:
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copytree(os.path.join(REPO, "csrc"), f"{tmp}/csrc")
            mutant = lines[:i] + [SITE.sub(";", lines[i], count=1)] + lines[i + 1:]
            open(f"{tmp}/{a.target}", "w").write("\n".join(mutant))
            build(tmp, tmp)
            r = subprocess.run([sys.executable, "-c", CHECK, tmp, REPO, a.versions],
                               capture_output=True, text=True)
            verdict = (r.stdout.strip().splitlines() or [r.stderr.strip()[-200:]])[-1]
        caught += verdict.startswith("caught")
        print(f"line {i + 1}: {lines[i].strip()[:60]!r} -> {verdict}", flush=True)
    print(f"{caught} of {len(sites)} deletions caught")


if __name__ == "__main__":
    main()
