"""fastlm.ops.attention vs a float64 reference: outputs and gradients, causal, GQA, odd lengths."""
import os
import sys

import pytest

torch = pytest.importorskip("torch")

from reference_ops import attention_ref  # noqa: E402

from fastlm.ops import _dispatch, attention  # noqa: E402
from fastlm.ops.attention import kernel_supports  # noqa: E402

CUDA = torch.cuda.is_available() and _dispatch.cuda_module() is not None
# Kernel versions tested (attention.cu header). tools/gpu_check.sh runs an unproven version in
# its own pytest process, so that a crash there (sticky CUDA error) cannot hide the others.
VERSIONS = [int(v) for v in
            os.environ.get("FASTLM_TEST_ATTN_VERSIONS", "1,2,3,4,5,6,7,8,9").split(",")]
# v7 and v8 use wgmma: an sm_90 GPU and a build for sm_90a (CMakeLists.txt's default).
WGMMA = CUDA and _dispatch.cuda_module().wgmma_supported()


def _rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _grads(fn, q, k, v, g):
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = fn(q, k, v)
    (out.double() * g).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad


def _compare(q, k, v, causal, rel_tol):
    """Ours and SDPA (same dtype) vs the float64 reference; ours may be at most a little worse."""
    gqa = q.shape[1] != k.shape[1]
    # a fixed upstream gradient (drawn on the CPU, so the same on every device): an unseeded draw
    # depends on which tests ran before and makes a failure irreproducible when run alone
    g = torch.randn(q.shape, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(q.shape[-2])).to(q.device)
    ref = _grads(lambda a, b, c: attention_ref(a, b, c, is_causal=causal), q.double(),
                 k.double(), v.double(), g)
    ours = _grads(lambda a, b, c: attention(a, b, c, is_causal=causal, enable_gqa=gqa), q, k, v, g)
    sdpa = _grads(lambda a, b, c: attention(a, b, c, is_causal=causal, enable_gqa=gqa,
                                            backend="torch"), q, k, v, g)
    for name, o, s, r in zip(("out", "dq", "dk", "dv"), ours, sdpa, ref):
        assert torch.isfinite(o).all(), f"{name}: non-finite values"
        e_ours, e_sdpa = _rel(o, r), _rel(s, r)
        if float(r.norm()) < 1e-6:  # e.g. dq with a single key is exactly 0: absolute check
            assert float((o.double() - r).abs().max()) < 1e-4, f"{name}: not ~0"
            continue
        assert e_ours < max(rel_tol, 2.0 * e_sdpa), (
            f"{name}: rel err {e_ours:.2e} (sdpa {e_sdpa:.2e}), max abs "
            f"{float((o.double() - r).abs().max()):.2e}")


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(1, 2, 2, 5, 64), (2, 4, 2, 17, 64), (1, 2, 1, 9, 128)])
def test_cpu_path_matches_reference(shape, causal):
    b, hq, hkv, t, d = shape
    gen = torch.Generator().manual_seed(t * 3 + d)
    q = torch.randn(b, hq, t, d, generator=gen)
    k = torch.randn(b, hkv, t, d, generator=gen)
    v = torch.randn(b, hkv, t, d, generator=gen)
    assert not kernel_supports(q, k, v, causal)
    _compare(q, k, v, causal, 1e-5)


@pytest.mark.parametrize("case", ["2d", "3d", "5d", "value_dim", "broadcast_heads", "broadcast_batch",
                                  "gqa", "cross_causal"])
@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if CUDA else []))
def test_every_shape_sdpa_takes(case, device):
    """Shapes F.scaled_dot_product_attention accepts (any batch dims, value head dim != query's,
    broadcast heads / batch): the same result (SDPA's own path where the kernel does not apply)."""
    gen = torch.Generator().manual_seed(len(case))
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    shapes = {"2d": ((5, 64), (6, 64), (6, 64)), "3d": ((2, 5, 64), (2, 6, 64), (2, 6, 64)),
              "5d": ((2, 3, 2, 5, 64),) * 3, "value_dim": ((1, 2, 5, 64), (1, 2, 6, 64), (1, 2, 6, 32)),
              "broadcast_heads": ((2, 4, 5, 64), (2, 1, 5, 64), (2, 1, 5, 64)),
              "broadcast_batch": ((2, 4, 5, 64), (1, 4, 5, 64), (1, 4, 5, 64)),
              "gqa": ((2, 4, 9, 64), (2, 2, 9, 64), (2, 2, 9, 64)),
              "cross_causal": ((1, 2, 3, 64), (1, 2, 7, 64), (1, 2, 7, 64))}[case]
    q, k, v = (torch.randn(s, generator=gen).to(device, dtype) for s in shapes)
    kw = {"enable_gqa": True} if case == "gqa" else {}
    for causal in (False, True):
        ours = attention(q, k, v, is_causal=causal, **kw)
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, **kw)
        assert ours.shape == ref.shape
        assert torch.allclose(ours.float(), ref.float(), atol=2e-2 if device == "cuda" else 1e-6)


@pytest.mark.parametrize("bad, error, message", [
    ("dims", ValueError, r"must be at least 2-D .* got query \(64,\)"),
    ("heads", ValueError, "query has 4 heads, key/value 3"),
    ("device_dtype", TypeError, "dtypes differ"),
    ("integer", TypeError, "must be floating point, got torch.int64"),
    ("shape", ValueError, "incompatible shapes"),
    ("dropout", ValueError, "dropout_p must be in"),
    ("backend", ValueError, "backend must be"),
])
def test_bad_arguments(bad, error, message):
    q = k = v = torch.randn(1, 4, 8, 64)
    kw = {"enable_gqa": bad == "heads"}
    if bad == "dims":
        q = torch.randn(64)
    elif bad == "heads":
        k = v = torch.randn(1, 3, 8, 64)
    elif bad == "device_dtype":
        k = torch.randn(1, 4, 8, 64, dtype=torch.float64)
    elif bad == "integer":
        q = k = v = torch.ones(1, 4, 8, 64, dtype=torch.long)
    elif bad == "shape":
        v = torch.randn(1, 4, 9, 64)
    elif bad == "dropout":
        kw["dropout_p"] = 1.5
    elif bad == "backend":
        kw["backend"] = "flash"
    with pytest.raises(error, match=message):
        attention(q, k, v, **kw)


def test_sdpa_signature_mask_and_dropout():
    """SDPA's signature (query, key, value, attn_mask, dropout_p, is_causal, *, scale,
    enable_gqa); a mask or dropout goes to SDPA and gives its result."""
    import torch.nn.functional as F
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(2, 4, 11, 64, generator=gen)
    k, v = torch.randn(2, 2, 11, 64, generator=gen), torch.randn(2, 2, 11, 64, generator=gen)
    want = F.scaled_dot_product_attention(q, k, v, None, 0.0, True, scale=0.3, enable_gqa=True)
    torch.testing.assert_close(attention(q, k, v, None, 0.0, True, scale=0.3, enable_gqa=True),
                               want)
    torch.testing.assert_close(
        attention(query=q, key=k, value=v, is_causal=True, scale=0.3, enable_gqa=True), want)
    mask = torch.rand(2, 1, 11, 11, generator=gen) > 0.3
    mask[..., 0] = True  # every query sees a key
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    got = attention(q, k, v, attn_mask=mask, enable_gqa=True)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, attention(q, k, v, enable_gqa=True))  # the mask is applied
    torch.manual_seed(0)
    want = F.scaled_dot_product_attention(q, k, v, dropout_p=0.5, enable_gqa=True)
    torch.manual_seed(0)
    torch.testing.assert_close(attention(q, k, v, dropout_p=0.5, enable_gqa=True), want)


# ----------------------------------------------------------------------------- CUDA
CUDA_SHAPES = [  # (B, Hq, Hkv, T, D): T not a multiple of the 64-row tile, GQA, T=1
    (1, 1, 1, 1, 64), (2, 4, 4, 63, 64), (1, 4, 2, 100, 64), (2, 8, 2, 257, 128),
    (1, 2, 2, 128, 128), (1, 6, 3, 515, 64), (1, 4, 1, 1000, 128),
]


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU and fastlm._cuda")
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", CUDA_SHAPES)
def test_cuda_matches_reference(shape, causal, dtype, version, monkeypatch):
    if version in (7, 8) and not WGMMA:
        pytest.skip(f"version {version} (wgmma) needs an sm_90 GPU and fastlm._cuda built for "
                    "sm_90a")
    monkeypatch.setattr(sys.modules["fastlm.ops.attention"], "KERNEL_VERSION", version)
    b, hq, hkv, t, d = shape
    dt = getattr(torch, dtype)
    gen = torch.Generator(device="cuda").manual_seed(t * 7 + d + causal)
    q, k, v = (torch.randn(b, h, t, d, device="cuda", generator=gen).to(dt)
               for h in (hq, hkv, hkv))
    assert kernel_supports(q, k, v, causal)
    _compare(q, k, v, causal, 2e-2 if dt == torch.bfloat16 else 5e-3)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU and fastlm._cuda")
def test_cuda_noncausal_cross_lengths_and_strided_inputs():
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(2, 70, 4, 64, device="cuda", generator=gen).bfloat16().transpose(1, 2)
    k = torch.randn(2, 4, 130, 64, device="cuda", generator=gen).bfloat16()
    v = torch.randn(2, 4, 130, 64, device="cuda", generator=gen).bfloat16()
    _compare(q, k, v, False, 2e-2)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU and fastlm._cuda")
def test_cuda_deterministic_forward_and_compile():
    gen = torch.Generator(device="cuda").manual_seed(1)
    q, k, v = (torch.randn(1, 4, 200, 128, device="cuda", generator=gen).half()
               for _ in range(3))
    a = attention(q, k, v, is_causal=True)
    b = attention(q, k, v, is_causal=True)
    assert torch.equal(a, b)
    c = torch.compile(lambda q, k, v: attention(q, k, v, is_causal=True), fullgraph=True,
                      backend="eager")(q, k, v)
    assert torch.equal(a, c)


def test_kernel_version_from_environment(monkeypatch):
    """FASTLM_ATTN_VERSION / FASTLM_CE_VERSION: unset gives the default; a bad value is refused
    with a message naming the variable (not a bare int() error, not a failure at first launch)."""
    monkeypatch.delenv("FASTLM_CE_VERSION", raising=False)
    assert _dispatch.kernel_version("FASTLM_CE_VERSION", 1, range(1, 3)) == 1
    monkeypatch.setenv("FASTLM_CE_VERSION", "2")
    assert _dispatch.kernel_version("FASTLM_CE_VERSION", 1, range(1, 3)) == 2
    attn_mod = sys.modules["fastlm.ops.attention"]
    monkeypatch.delenv("FASTLM_ATTN_VERSION", raising=False)
    assert _dispatch.kernel_version("FASTLM_ATTN_VERSION", None, range(1, 10)) is None
    # unset: the version measured fastest per head dim
    monkeypatch.setattr(attn_mod, "KERNEL_VERSION", None)
    assert (attn_mod.kernel_version_for(64), attn_mod.kernel_version_for(128)) == (5, 6)
    # a version measured faster where wgmma runs is the default there only
    monkeypatch.setattr(attn_mod, "WGMMA_VERSION_BY_HEAD_DIM", {128: 8})
    cuda = torch.device("cuda", 0)
    for runs, want in ((True, (5, 8)), (False, (5, 6))):
        monkeypatch.setattr(attn_mod, "_runs_wgmma", lambda device, runs=runs: runs)
        assert (attn_mod.kernel_version_for(64, cuda), attn_mod.kernel_version_for(128, cuda)) == want
    assert attn_mod.kernel_version_for(128) == 6  # no device named: the default
    monkeypatch.setattr(attn_mod, "KERNEL_VERSION", 3)  # FASTLM_ATTN_VERSION=3
    assert (attn_mod.kernel_version_for(64), attn_mod.kernel_version_for(128, cuda)) == (3, 3)
    for bad in ("10", "0", "two", "-1"):
        monkeypatch.setenv("FASTLM_ATTN_VERSION", bad)
        with pytest.raises(ValueError,
                           match=r"FASTLM_ATTN_VERSION=.*one of 1, 2, 3, 4, 5, 6, 7, 8, 9$"):
            _dispatch.kernel_version("FASTLM_ATTN_VERSION", 3, range(1, 10))


def test_wgmma_version_refused_where_it_cannot_run():
    """Versions 7 and 8 (wgmma) on a machine without an sm_90 GPU (or a build without sm_90a) are
    refused with a clear error before anything is launched; version 10 does not exist. Runs against
    the real fastlm._cuda wherever it is built (CI has nvcc but no GPU)."""
    try:
        from fastlm import _cuda
    except ImportError:
        pytest.skip("fastlm._cuda not built (no nvcc)")
    if _cuda.wgmma_supported():
        pytest.skip("this machine runs versions 7 and 8")
    sizes, strides = (1, 1, 1, 8, 8, 64), ((512, 512, 64),) * 4
    fake = 256  # never dereferenced: the version is checked first
    with pytest.raises(ValueError, match="version 7 uses wgmma: it needs an sm_90 GPU"):
        _cuda.attention_forward(fake, fake, fake, fake, fake, sizes, strides, 0.125, False, 1, 7,
                                0)
    with pytest.raises(ValueError, match="version 7 uses wgmma"):
        _cuda.attention_backward(fake, fake, fake, fake, fake, fake, fake, fake, fake, fake, fake,
                                 sizes, strides, 0.125, False, 1, 7, 0)
    with pytest.raises(ValueError, match="version 8 uses wgmma: it needs an sm_90 GPU"):
        _cuda.attention_forward(fake, fake, fake, fake, fake, sizes, strides, 0.125, False, 1, 8,
                                0)
    with pytest.raises(ValueError, match="kernel version must be 1 to 9"):
        _cuda.attention_forward(fake, fake, fake, fake, fake, sizes, strides, 0.125, False, 1, 10,
                                0)
    with pytest.raises(ValueError, match="needs an sm_90 GPU"):
        _cuda.wgmma_probe(fake, fake, fake, 64, 0, 1, 0)
