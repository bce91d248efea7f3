"""One forward + backward of fastlm's CUDA attention per kernel version at one benchmark shape, for
Nsight Compute: `ncu -k regex:attn_ python3 tools/profile_attention.py 3 6` (tools/gpu_check.sh
runs it when time is left). Prints one line per version; exits non-zero on a non-finite result.
    python3 tools/profile_attention.py [--d 128] [--t 4096] [--causal] VERSION...
"""
import argparse
import sys

import torch

import fastlm.ops  # noqa: F401

attn = sys.modules["fastlm.ops.attention"]  # the module (fastlm.ops.attention is the function)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("versions", nargs="+", type=int)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--t", type=int, default=4096)
    ap.add_argument("--tokens", type=int, default=16384, help="B*T")
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--causal", action="store_true")
    a = ap.parse_args()
    b = max(1, a.tokens // a.t)
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(b, a.heads, a.t, a.d, device="cuda", generator=gen, dtype=torch.bfloat16)
               .requires_grad_() for _ in range(3))
    g = torch.randn_like(q)
    bad = 0
    for ver in a.versions:
        attn.KERNEL_VERSION = ver
        q.grad = k.grad = v.grad = None
        out = attn.attention(q, k, v, is_causal=a.causal)
        out.backward(g)
        torch.cuda.synchronize()
        ok = all(bool(torch.isfinite(x).all()) for x in (out, q.grad, k.grad, v.grad))
        bad += not ok
        print(f"v{ver} B={b} H={a.heads} T={a.t} D={a.d} causal={a.causal}: "
              f"{'ok' if ok else 'NON-FINITE'}", flush=True)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
