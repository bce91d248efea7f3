"""Forward + backward of fastlm's CUDA attention kernel on a few small odd shapes, for running under
compute-sanitizer (memcheck / racecheck) on a GPU machine: `python3 tools/sanitize_attention.py 5`
(kernel versions as arguments; tools/gpu_check.sh runs it when GPU_CHECK_SANITIZE=1 or when the
newest version's tests fail). Prints one line per case; exits non-zero on a non-finite result."""
import sys

import torch

import fastlm.ops  # noqa: F401

attn = sys.modules["fastlm.ops.attention"]  # the module (fastlm.ops.attention is the function)

SHAPES = [(1, 2, 1, 257, 64), (1, 2, 2, 130, 128), (2, 4, 2, 63, 64)]  # (B, Hq, Hkv, T, D)


def main():
    defaults = sorted({attn.kernel_version_for(d) for d in (64, 128)})
    versions = [int(v) for v in sys.argv[1:]] or defaults
    gen = torch.Generator(device="cuda").manual_seed(0)
    bad = 0
    for ver in versions:
        attn.KERNEL_VERSION = ver
        for b, hq, hkv, t, d in SHAPES:
            for causal in (False, True):
                q, k, v = (torch.randn(b, h, t, d, device="cuda", generator=gen, dtype=torch.bfloat16)
                           .requires_grad_() for h in (hq, hkv, hkv))
                out = attn.attention(q, k, v, is_causal=causal, enable_gqa=hq != hkv)
                out.backward(torch.randn_like(out))
                torch.cuda.synchronize()
                ok = all(bool(torch.isfinite(x).all()) for x in (out, q.grad, k.grad, v.grad))
                bad += not ok
                print(f"v{ver} B={b} Hq={hq} Hkv={hkv} T={t} D={d} causal={causal}: "
                      f"{'ok' if ok else 'NON-FINITE'}", flush=True)
    # Cross lengths (non-causal): Tq != Tk.
    attn.KERNEL_VERSION = versions[-1]
    q = torch.randn(1, 2, 70, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, 2, 130, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, 2, 130, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    attn.attention(q, k, v).sum().backward()
    torch.cuda.synchronize()
    print("cross lengths Tq=70 Tk=130: ok", flush=True)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
