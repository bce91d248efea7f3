"""fastlm's CUDA kernels, run on the CPU by the warp emulator (fastlm._cuda_emu, built from the
same csrc/kernels/*.cu source; model and limits in csrc/emu/cuda_emu.h), against float64
references: every attention kernel version, the cross-entropy chunk kernel inside the whole
linear_cross_entropy op, and the Python glue (custom ops, strides, autograd). These run in CI,
which has no GPU; tests/test_attention.py and test_cross_entropy.py run the real thing on a GPU.

The emulator reshuffles thread order at every barrier, lands cp.async copies early or late and
wgmma products at their wait, starts shared memory as NaN and checks barriers, collectives,
wgmma fences, proxy fences, alignment and shared-memory bounds; test_emulator_catches_broken_kernels
shows that each of those bugs does fail here."""
import functools
import math
import platform
import sys
import zlib

import pytest

torch = pytest.importorskip("torch")

from reference_ops import attention_ref  # noqa: E402
from test_cross_entropy import OPTIONS, _check  # noqa: E402

from fastlm.ops import _dispatch, linear_cross_entropy  # noqa: E402

try:
    from fastlm import _cuda_emu as emu
except ImportError:  # the build skips it only without ucontext (musl, Windows)
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        raise
    emu = None
pytestmark = pytest.mark.skipif(emu is None, reason="fastlm._cuda_emu not built on this platform")

SELFTESTS = ["rotate", "async_rotate", "reuse", "divergent_sync", "divergent_shfl", "overflow",
             "ldmatrix_misaligned", "misaligned_vector", "wgmma_fence", "wgmma_wait", "wgmma_reuse",
             "wgmma_proxy", "wgmma_regs", "wgmma_early", "global_bounds"]


@pytest.fixture(autouse=True)
def _emu_defaults():
    emu.set_seed(1)
    emu.set_copy_timing("mixed")
    yield
    emu.set_seed(1)
    emu.set_copy_timing("mixed")
    emu.set_global_regions([])


@pytest.mark.parametrize("name", SELFTESTS)
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_emulator_catches_broken_kernels(name, seed):
    """Each deliberately broken kernel (missing barrier, read before the cp.async wait, buffer
    reuse without a barrier, divergent barrier or shuffle, shared-memory overflow, misaligned
    ldmatrix or 16-byte vector load; a wgmma without its fence, read before its wait, with its
    shared operand overwritten in flight, reading cp.async data without fence.proxy.async, with
    its A registers changed in flight, or issued before its operands are copied; a cp.async or
    atomic outside the named global tensors) fails (wrong result or an error); its correct twin
    passes."""
    emu.set_seed(seed)
    assert emu.selftest(name) != "ok"
    assert emu.selftest(name + "_good") == "ok"
    with pytest.raises(ValueError, match="unknown case"):
        emu.selftest("nope")


def test_emulator_errors_name_the_place():
    msg = emu.selftest("divergent_sync")
    assert "divergent barrier" in msg and "block (0,0,0)" in msg
    assert "16-byte aligned" in emu.selftest("ldmatrix_misaligned")
    assert "written past its 512 bytes" in emu.selftest("overflow")
    assert "misaligned 16-byte access (address % 16 = 8) at" in emu.selftest("misaligned_vector")
    assert "without a wgmma.fence" in emu.selftest("wgmma_fence")
    assert emu.selftest("wgmma_wait") == "wrong"  # the accumulator reads NaN before the wait
    assert "no fence.proxy.async" in emu.selftest("wgmma_proxy")
    assert "A registers changed while the product was in flight" in emu.selftest("wgmma_regs")
    with pytest.raises(ValueError, match="lazy, eager or mixed"):
        emu.set_copy_timing("sometimes")


def test_emulated_16bit_conversions_match_torch():
    """The emulator's fp16/bf16 conversions (round to nearest even, as __float2half and
    __float2bfloat16) against torch's: every fp16 value back and forth, and random floats over
    the whole range, including fp16 subnormals, overflow and exact ties."""
    bits = torch.arange(65536, dtype=torch.int32).to(torch.int16)
    halves = bits.view(torch.float16).float()
    for b, h in zip(bits.tolist(), halves.tolist()):
        f = emu.half_bits_to_float(b & 0xFFFF)
        assert f == h or (math.isnan(f) and math.isnan(h)), hex(b & 0xFFFF)
        if not math.isnan(h):
            assert emu.float_to_half_bits(h) == b & 0xFFFF, hex(b & 0xFFFF)
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([
        torch.randn(20000, generator=gen) * torch.logspace(-9, 5, 20000),  # 1e-9 .. 1e5
        (torch.arange(-4096, 4096) + 0.5) * 2.0 ** -24,  # ties between fp16 subnormals
        (torch.arange(1024, 2048) + 0.5) * 2.0 ** -10,  # ties between normals in [1, 2)
        torch.tensor([65504.0, 65519.0, 65520.0, 1e9, -1e9, float("inf"), float("-inf")])])
    want16 = x.half().view(torch.int16).int() & 0xFFFF
    want_bf = x.bfloat16().view(torch.int16).int() & 0xFFFF
    for v, w16, wbf in zip(x.tolist(), want16.tolist(), want_bf.tolist()):
        assert emu.float_to_half_bits(v) == w16, (v, hex(w16))
        assert emu.float_to_bf16_bits(v) == wbf, (v, hex(wbf))


# ----------------------------------------------------------------------------- attention
def _guarded(shape, dtype, gen=None, fill=float("nan")):
    """A tensor in the middle of a NaN-filled buffer: a kernel reading outside it gets NaN, one
    writing outside it changes the guards (checked by _guards_intact)."""
    n = math.prod(shape)
    buf = torch.full((n + 2 * 64,), fill, dtype=dtype)
    t = buf[64:64 + n].view(shape)
    if gen is not None:
        t.copy_(torch.randn(shape, generator=gen))
    return t, buf


def _guards_intact(buf):
    return bool(torch.isnan(buf[:64]).all() and torch.isnan(buf[-64:]).all())


def _strides(t):
    return (t.stride(0), t.stride(1), t.stride(2))


def _run_attention(b, hq, hkv, t, d, causal, dtype, version, seed):
    """Forward and backward through the emulated kernels; returns (out, dq, dk, dv), the
    float64 reference of each, and the guard buffers."""
    gen = torch.Generator().manual_seed(seed)
    (q, qb), (k, kb), (v, vb) = (_guarded((b, h, t, d), dtype, gen) for h in (hq, hkv, hkv))
    (do, dob) = _guarded((b, hq, t, d), dtype, gen)
    o, ob = _guarded((b, hq, t, d), dtype)
    lse, lb = _guarded((b, hq, t), torch.float32)
    dq, dqb = _guarded((b, hq, t, d), dtype)
    dk, dkb = _guarded((b, hkv, t, d), dtype)
    dv, dvb = _guarded((b, hkv, t, d), dtype)
    acc, ab = _guarded((b, hq, t, d), torch.float32)
    delta, deb = _guarded((b, hq, t), torch.float32)
    # cp.async sources and the dQ atomics must stay inside the tensors, not reach the guards
    # (an atomic adding 0 to a NaN guard would leave it NaN: the guards alone miss that).
    emu.set_global_regions([(x.data_ptr(), x.numel() * x.element_size())
                            for x in (q, k, v, do, o, lse, dq, dk, dv, acc, delta)])
    code = _dispatch.dtype_code(dtype)
    sizes = (b, hq, hkv, t, t, d)
    strides = (_strides(q), _strides(k), _strides(v), _strides(do))
    scale = d ** -0.5
    emu.attention_forward(q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), lse.data_ptr(),
                          sizes, strides, scale, causal, code, version, 0)
    emu.attention_backward(do.data_ptr(), q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(),
                           lse.data_ptr(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(),
                           acc.data_ptr(), delta.data_ptr(), sizes, strides, scale, causal, code,
                           version, 0)
    emu.set_global_regions([])
    qr, kr, vr = (x.double().requires_grad_() for x in (q, k, v))
    ref = attention_ref(qr, kr, vr, is_causal=causal)
    (ref * do.double()).sum().backward()
    lse_ref = torch.logsumexp(
        (qr.detach() @ kr.detach().repeat_interleave(hq // hkv, 1).transpose(-1, -2)) * scale
        + (torch.full((t, t), float("-inf")).triu(1) if causal else 0.0), dim=-1)
    bufs = [qb, kb, vb, dob, ob, lb, dqb, dkb, dvb, ab, deb]
    return (o, lse, dq, dk, dv), (ref.detach(), lse_ref, qr.grad, kr.grad, vr.grad), bufs


def _rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# (B, Hq, Hkv, T, D): T = 1, T not a multiple of any tile (64/128 rows, 32/64 keys), GQA,
# several query and key blocks, both head dims. Kept small: the emulator runs ~1e5 mma/s.
EMU_SHAPES = [(1, 1, 1, 1, 64), (1, 2, 1, 70, 64), (2, 4, 2, 63, 64), (1, 2, 1, 257, 64),
              (1, 1, 1, 1, 128), (1, 2, 2, 40, 128), (1, 2, 1, 200, 128)]


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5, 6, 7, 8, 9])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", EMU_SHAPES)
def test_attention_kernels_match_reference(shape, causal, version):
    b, hq, hkv, t, d = shape
    for dtype, tol in ((torch.bfloat16, 1.5e-2), (torch.float16, 3e-3)):
        seed = zlib.crc32(repr((shape, causal, version, str(dtype))).encode())
        ours, ref, bufs = _run_attention(b, hq, hkv, t, d, causal, dtype, version, seed)
        assert all(_guards_intact(x) for x in bufs), "a kernel wrote outside its tensor"
        for name, a, r in zip(("out", "lse", "dq", "dk", "dv"), ours, ref):
            assert torch.isfinite(a).all(), f"{name} ({dtype}): non-finite values"
            if float(r.norm()) < 1e-6:  # a single key: dq and dk are exactly 0
                assert float(a.double().abs().max()) < 1e-4, f"{name} ({dtype}): not ~0"
                continue
            err = _rel(a, r)
            assert err < (1e-5 if name == "lse" else tol), f"{name} ({dtype}): rel err {err:.2e}"


@pytest.mark.parametrize("version", [7, 8])
@pytest.mark.parametrize("reading, mask", [("swapped-k-major", 1), ("swapped-mn-major", 2),
                                           ("swapped", 3)])
def test_wgmma_versions_run_on_hardware_that_reads_offsets_swapped(reading, mask, version):
    """The FASTLM_WGMMA_SWAP fallback (csrc/kernels/wgmma.cuh, desc_k_major): on emulated
    hardware that reads a form's descriptor offsets the other way round, v7 / v8 are wrong as
    built and right with the mask tests/test_wgmma.py names for it."""
    emu.set_wgmma_reading(reading)
    try:
        try:  # as built: wrong, or reading outside what the block wrote (an emulator error)
            ours, ref, _ = _run_attention(1, 2, 1, 150, 64, True, torch.bfloat16, version, 11)
            assert max(_rel(a, r) for a, r in zip(ours, ref)) > 0.1
        except RuntimeError as e:
            assert "wgmma" in str(e)
        emu.set_wgmma_swap(mask)
        ours, ref, _ = _run_attention(1, 2, 1, 150, 64, True, torch.bfloat16, version, 11)
        for name, a, r in zip(("out", "lse", "dq", "dk", "dv"), ours, ref):
            assert _rel(a, r) < (1e-5 if name == "lse" else 1.5e-2), name
    finally:
        emu.set_wgmma_reading("isa")
        emu.set_wgmma_swap(0)


@pytest.mark.parametrize("timing", ["lazy", "eager"])
@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("version", [3, 4, 5, 6, 7, 8, 9])
def test_attention_kernels_under_each_copy_timing(version, seed, timing):
    """Every cp.async copy landing as late, or as early, as the hardware allows, in thread
    index order (seed 0) or shuffled: the cp.async kernels still give the same answer."""
    emu.set_seed(seed)
    emu.set_copy_timing(timing)
    ours, ref, _ = _run_attention(1, 2, 1, 150, 64, True, torch.bfloat16, version, 5)
    for a, r in zip(ours, ref):
        assert _rel(a, r) < 1.5e-2


def _extent(ptr, shape, strides, elem_size):
    """(address, bytes) from a tensor's first element to its last (last dim contiguous)."""
    last = sum((n - 1) * s for n, s in zip(shape, tuple(strides) + (1,)))
    return ptr, (last + 1) * elem_size


class _BoundedEmu:
    """The emulator module, with every attention launch's tensors (their extents from the sizes
    and strides the op passes) named as the only global memory its cp.async sources and atomics
    may touch."""

    def __getattr__(self, name):
        return getattr(emu, name)

    @staticmethod
    def _run(fn, regions, *args):
        emu.set_global_regions(regions)
        try:
            fn(*args)
        finally:
            emu.set_global_regions([])

    def attention_forward(self, q, k, v, o, lse, sizes, strides, *rest):
        b, hq, hkv, tq, tk, d = sizes
        e = 4 if rest[3] == 0 else 2  # dtype code
        regions = [_extent(q, (b, hq, tq, d), strides[0], e),
                   _extent(k, (b, hkv, tk, d), strides[1], e),
                   _extent(v, (b, hkv, tk, d), strides[2], e),
                   (o, b * hq * tq * d * e), (lse, b * hq * tq * 4)]
        self._run(emu.attention_forward, regions, q, k, v, o, lse, sizes, strides, *rest)

    def attention_backward(self, do, q, k, v, o, lse, dq, dk, dv, acc, delta, sizes, strides,
                           *rest):
        b, hq, hkv, tq, tk, d = sizes
        e = 4 if rest[3] == 0 else 2
        nq, nk = b * hq * tq, b * hkv * tk
        regions = [_extent(do, (b, hq, tq, d), strides[3], e),
                   _extent(q, (b, hq, tq, d), strides[0], e),
                   _extent(k, (b, hkv, tk, d), strides[1], e),
                   _extent(v, (b, hkv, tk, d), strides[2], e),
                   (o, nq * d * e), (lse, nq * 4), (dq, nq * d * e), (dk, nk * d * e),
                   (dv, nk * d * e), (acc, nq * d * 4), (delta, nq * 4)]
        self._run(emu.attention_backward, regions, do, q, k, v, o, lse, dq, dk, dv, acc, delta,
                  sizes, strides, *rest)


@pytest.fixture
def emu_dispatch(monkeypatch):
    """Routes the CUDA launches of fastlm.ops to the emulator, for CPU tensors, with the
    attention launches' global memory bounds-checked (_BoundedEmu)."""
    monkeypatch.setattr(_dispatch, "cuda_module", lambda: _BoundedEmu())
    monkeypatch.setattr(_dispatch, "stream_handle", lambda device: 0)


@pytest.mark.parametrize("version", [3, 6, 7, 8, 9])
def test_attention_op_glue_through_emulator(emu_dispatch, version):
    """The custom op and its autograd (strided inputs made kernel-ready, GQA, lse, backward)
    with the kernels emulated, against the float64 reference."""
    from fastlm.ops.attention import _attn_fwd

    gen = torch.Generator().manual_seed(version)
    q = torch.randn(2, 70, 4, 64, generator=gen).bfloat16().transpose(1, 2)  # (B, T, H, D) layout
    k = torch.randn(2, 2, 70, 64, generator=gen).bfloat16()
    v = torch.randn(2, 2, 140, 64, generator=gen).bfloat16()[:, :, ::2]  # time stride 128
    g = torch.randn(2, 4, 70, 64, generator=gen, dtype=torch.float64)
    qa, ka, va = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out, lse = _attn_fwd(qa, ka, va, True, 0.125, version)
    (out.double() * g).sum().backward()
    qr, kr, vr = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = attention_ref(qr, kr, vr, is_causal=True, scale=0.125)
    (ref * g).sum().backward()
    for name, a, r in (("out", out, ref), ("dq", qa.grad, qr.grad), ("dk", ka.grad, kr.grad),
                       ("dv", va.grad, vr.grad)):
        assert a.shape == r.shape and _rel(a, r) < 1.5e-2, f"{name}: {_rel(a, r):.2e}"


@pytest.mark.parametrize("version", [5, 6, 7, 8, 9])
@pytest.mark.parametrize("tq, tk, d", [(70, 200, 64), (200, 70, 64), (130, 40, 128)])
def test_attention_cross_lengths_through_emulator(emu_dispatch, version, tq, tk, d):
    """Non-causal attention with Tq != Tk (cross attention): more key tiles than query blocks
    and the reverse, both head dims, forward and every gradient against float64."""
    from fastlm.ops.attention import _attn_fwd

    gen = torch.Generator().manual_seed(tq * 3 + tk)
    q = torch.randn(1, 2, tq, d, generator=gen).bfloat16()
    k, v = (torch.randn(1, 2, tk, d, generator=gen).bfloat16() for _ in range(2))
    g = torch.randn(1, 2, tq, d, generator=gen, dtype=torch.float64)
    qa, ka, va = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out, _ = _attn_fwd(qa, ka, va, False, d ** -0.5, version)
    (out.double() * g).sum().backward()
    qr, kr, vr = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = attention_ref(qr, kr, vr, is_causal=False)
    (ref * g).sum().backward()
    for name, a, r in (("out", out, ref), ("dq", qa.grad, qr.grad), ("dk", ka.grad, kr.grad),
                       ("dv", va.grad, vr.grad)):
        assert a.shape == r.shape and _rel(a, r) < 1.5e-2, f"{name}: {_rel(a, r):.2e}"


# ----------------------------------------------------------------------------- cross-entropy
def _use_emulated_ce_kernel(monkeypatch, version):
    """linear_cross_entropy on CPU tensors with the CUDA chunk kernel (emulated) in place of the
    CPU one: dlogits written in place in the input dtype, as on a GPU."""
    from fastlm.ops import cross_entropy

    monkeypatch.setattr(cross_entropy, "_run_chunk_kernel", functools.partial(
        cross_entropy._run_device_kernel, emu, 0, version=version))


@pytest.fixture(params=[1, 2, 3], ids=["v1", "v2", "v3"])
def emu_cross_entropy(monkeypatch, request):
    _use_emulated_ce_kernel(monkeypatch, request.param)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("opt", range(len(OPTIONS)))
def test_cross_entropy_kernel_matches_reference(emu_cross_entropy, dtype, reduction, opt):
    """Odd V (41, 1009, 4099) makes v2's rows start at every alignment (scalar head and tail
    around the 16-byte vectors); V=41 in fp32 leaves one vector per row."""
    dt = getattr(torch, dtype)
    for n, d, v in [(1, 16, 41), (37, 64, 1009), (20, 33, 4099)]:
        gen = torch.Generator().manual_seed(n * 7 + opt)
        x = (torch.randn(n, d, generator=gen) / d**0.5 * 3).to(dt)
        w = torch.randn(v, d, generator=gen).to(dt)
        t = torch.randint(0, v, (n,), generator=gen)
        t[torch.rand(n, generator=gen) < 0.2] = OPTIONS[opt].get("ignore_index", -100)
        t[0] = v - 1
        tol = (dict(atol=1e-4, rtol=1e-3) if dt == torch.float32
               else dict(norm_tol=1.5e-2 if dt == torch.bfloat16 else 4e-3))
        _check(x, w, t, reduction=reduction, **tol, **OPTIONS[opt])


def test_cross_entropy_kernel_extremes(emu_cross_entropy):
    """Huge logits (no inf/NaN), all rows ignored (zero loss and gradients), a target at the
    last vocabulary entry."""
    x = torch.tensor([[1e4, -1e4], [3.0, 1.0], [0.5, 0.5]])
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 1.0]])
    t = torch.tensor([2, 0, 1])
    _check(x, w, t, reduction="none", atol=1e-3, rtol=1e-4)
    xa = x.clone().requires_grad_()
    out = linear_cross_entropy(xa, w, torch.full((3,), -100), reduction="sum")
    out.backward()
    assert float(out.detach()) == 0.0 and float(xa.grad.abs().max()) == 0.0


def _ce_kernel_direct(version, dt, rows, v, ld, seed):
    """Runs the chunk kernel alone on rows with a stride (ld > V) and a start 2 (bf16) or 4
    (fp32) bytes past a 16-byte boundary; checks loss, lse and dlogits in place against float64,
    and that nothing is written past V in a row or outside the buffer. Returns the rows."""
    gen = torch.Generator().manual_seed(seed)
    buf = torch.full((rows * ld + 64,), 7.0, dtype=dt)
    z = buf[1:1 + rows * ld].view(rows, ld)  # element 1: 2 (bf16) or 4 (fp32) bytes past
    z[:, :v] = (torch.randn(rows, v, generator=gen) * 4).to(dt)
    z0 = z[:, :v].double().clone()
    target = torch.randint(0, v, (rows,), generator=gen)
    target[min(3, rows - 1)] = -100
    target[0] = v - 1
    gs = torch.rand(rows, generator=gen)
    loss, lse = torch.empty(rows), torch.empty(rows)
    emu.cross_entropy_chunk(z.data_ptr(), _dispatch.dtype_code(dt), rows, v, ld,
                            target.data_ptr(), loss.data_ptr(), lse.data_ptr(), gs.data_ptr(),
                            1.0, -100, 0.0, 0.0, 0.0, True, version, 0)
    lse_ref = torch.logsumexp(z0, dim=1)
    valid = target != -100
    loss_ref = torch.where(valid, lse_ref - z0.gather(1, target.clamp(0)[:, None])[:, 0], 0.0)
    grad_ref = torch.softmax(z0, dim=1)
    grad_ref[torch.arange(rows), target.clamp(0)] -= 1.0
    grad_ref = torch.where(valid[:, None], grad_ref * gs.double()[:, None], 0.0)
    tol = 1e-5 if dt == torch.float32 else 1e-2
    assert torch.allclose(lse.double(), lse_ref, atol=1e-4)
    assert torch.allclose(loss.double(), loss_ref, atol=1e-4)
    assert float((z[:, :v].double() - grad_ref).abs().max()) < tol
    untouched = torch.cat([z[:, v:].reshape(-1), buf[:1], buf[-63:]])
    assert bool((untouched == 7.0).all()), "written outside the rows' first V columns"
    return z


@pytest.mark.parametrize("version", [1, 2, 3])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cross_entropy_kernel_direct(version, dtype):
    """The chunk kernel alone (see _ce_kernel_direct); a bad version is refused."""
    dt = getattr(torch, dtype)
    rows, v, ld = 9, 203, 211
    z = _ce_kernel_direct(version, dt, rows, v, ld, seed=version)
    target, loss, lse = torch.zeros(rows, dtype=torch.int64), torch.empty(rows), torch.empty(rows)
    with pytest.raises(ValueError, match="version must be 1, 2 or 3"):
        emu.cross_entropy_chunk(z.data_ptr(), _dispatch.dtype_code(dt), rows, v, ld,
                                target.data_ptr(), loss.data_ptr(), lse.data_ptr(), 0, 1.0,
                                -100, 0.0, 0.0, 0.0, True, 4, 0)


@pytest.mark.parametrize("dtype, v", [
    ("bfloat16", 16001), ("bfloat16", 30001), ("bfloat16", 50304), ("bfloat16", 70001),
    ("float32", 8001), ("float32", 16001), ("float32", 30001), ("float32", 40001)])
def test_cross_entropy_v3_register_tiers(dtype, v):
    """v3 holds a row in 4, 8 or 16 16-byte vectors per thread (bf16 V up to 16384, 32768,
    65536; fp32 half that) and hands wider rows to v2: every tier and the hand-over, on rows
    with a stride and a misaligned start."""
    _ce_kernel_direct(3, getattr(torch, dtype), 3, v, v + 9, seed=v)

