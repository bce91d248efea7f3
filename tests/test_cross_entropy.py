"""fastlm.ops.linear_cross_entropy vs a float64 reference: forward, gradients, options, errors."""
import sys
import zlib

import pytest

torch = pytest.importorskip("torch")

from reference_ops import linear_cross_entropy_ref  # noqa: E402

from fastlm.ops import LinearCrossEntropy, linear_cross_entropy  # noqa: E402
from fastlm.ops import _dispatch  # noqa: E402

CUDA = torch.cuda.is_available() and _dispatch.cuda_module() is not None

# (N, d, V): small, odd (V=41, d=1023, N=1), primes; chunk sizes force several chunks.
SHAPES = [(1, 16, 41), (37, 23, 41), (64, 1023, 97), (129, 64, 1009), (8, 8, 3)]
OPTIONS = [
    dict(),
    dict(label_smoothing=0.1),
    dict(z_loss=1e-3),
    dict(softcap=7.5),
    dict(label_smoothing=0.05, z_loss=1e-4, softcap=15.0, ignore_index=5),
]


def _rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _check(x, w, t, *, bias=None, grad_weights=None, atol=1e-5, rtol=1e-4, norm_tol=None, **kw):
    """Forward and every gradient vs the float64 reference; prints how far off on failure.
    Element-wise |err| <= atol + rtol*|ref|, or with norm_tol (bf16/fp16, whose rounding makes
    element-wise bounds meaningless for small entries) ||err|| / ||ref|| <= norm_tol."""
    chunk_size = kw.pop("chunk_size", 16)
    xr = x.detach().double().requires_grad_()
    wr = w.detach().double().requires_grad_()
    br = None if bias is None else bias.detach().double().requires_grad_()
    ref = linear_cross_entropy_ref(xr, wr, t, bias=br, **kw)
    # upstream gradient from a fixed generator: the global RNG state depends on which tests ran
    # before, so an unseeded draw would make a failure irreproducible when run alone
    g = (torch.randn(ref.shape, dtype=ref.dtype, generator=torch.Generator().manual_seed(0))
         .to(ref.device) if grad_weights is None else grad_weights.double())
    (ref * g).sum().backward()
    xf = x.detach().clone().requires_grad_()
    wf = w.detach().clone().requires_grad_()
    bf = None if bias is None else bias.detach().clone().requires_grad_()
    out = linear_cross_entropy(xf, wf, t, linear_bias=bf, chunk_size=chunk_size, **kw)
    assert torch.isfinite(out).all() or not (t != kw.get("ignore_index", -100)).any()
    (out * g.to(out.dtype).to(out.device)).sum().backward()
    for name, a, b in [("loss", out, ref), ("dx", xf.grad, xr.grad), ("dW", wf.grad, wr.grad)] + (
            [("db", bf.grad, br.grad)] if bias is not None else []):
        a = a.detach().cpu().double()
        b = b.detach().cpu().double()
        if norm_tol is not None:
            assert _rel(a, b) <= norm_tol, f"{name}: rel err {_rel(a, b):.3e} > {norm_tol}"
            continue
        err = (a - b).abs()
        tol = atol + rtol * b.abs()
        bad = err > tol
        assert not bad.any(), (f"{name}: max abs err {float(err.max()):.3e} at "
                               f"{tuple(int(i) for i in torch.nonzero(bad)[0])}, rel {_rel(a, b):.3e}")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opt", range(len(OPTIONS)))
def test_cpu_fp32_matches_reference(shape, reduction, opt):
    n, d, v = shape
    # a stable seed per case (hash() of a str changes with PYTHONHASHSEED, so inputs would change per run)
    gen = torch.Generator().manual_seed(zlib.crc32(repr((shape, reduction, opt)).encode()))
    x = torch.randn(n, d, generator=gen) / d**0.5 * 3
    w = torch.randn(v, d, generator=gen)
    t = torch.randint(0, v, (n,), generator=gen)
    t[torch.rand(n, generator=gen) < 0.2] = OPTIONS[opt].get("ignore_index", -100)
    t[0] = v - 1  # at least one counted row (all-ignored is tested on its own)
    _check(x, w, t, reduction=reduction, **OPTIONS[opt])


def test_bias_and_3d_input():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 12, generator=gen)
    w = torch.randn(41, 12, generator=gen)
    b = torch.randn(41, generator=gen)
    t = torch.randint(0, 41, (2, 5), generator=gen)
    for red in ("mean", "none"):
        _check(x, w, t, bias=b, reduction=red)


def test_all_ignored_rows_and_batch():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(10, 8, generator=gen)
    w = torch.randn(41, 8, generator=gen)
    t = torch.full((10,), -100)
    t[3] = 7
    _check(x, w, t, reduction="mean")
    t[:] = -100  # everything ignored: sum is 0 with zero grads; mean is nan like torch
    _check(x, w, t, reduction="sum", grad_weights=torch.tensor(1.0))
    out = linear_cross_entropy(x, w, t)
    ref = torch.nn.functional.cross_entropy(x @ w.t(), t)
    assert torch.isnan(out) and torch.isnan(ref)


@pytest.mark.parametrize("scale", [30.0, 300.0])
def test_extreme_logits_finite(scale):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(33, 16, generator=gen) * scale
    w = torch.randn(97, 16, generator=gen)
    t = torch.randint(0, 97, (33,), generator=gen)
    _check(x, w, t, reduction="mean", rtol=1e-4, atol=1e-3 * scale)
    _check(x, w, t, reduction="mean", softcap=30.0)


def test_matches_torch_linear_cross_entropy_and_noncontiguous():
    F = torch.nn.functional
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(16, 40, generator=gen)[:, ::2]  # non-contiguous
    w = torch.randn(41, 20, generator=gen)
    t = torch.randint(0, 41, (16,), generator=gen)
    ours = linear_cross_entropy(x, w, t, label_smoothing=0.1)
    theirs = F.cross_entropy(F.linear(x, w), t, label_smoothing=0.1)
    assert torch.allclose(ours, theirs, atol=1e-5)
    if hasattr(F, "linear_cross_entropy"):
        assert torch.allclose(ours, F.linear_cross_entropy(x, w, t, label_smoothing=0.1),
                              atol=1e-5)


TORCH_LCE = hasattr(torch.nn.functional, "linear_cross_entropy")
needs_torch_lce = pytest.mark.skipif(not TORCH_LCE, reason="this torch has no F.linear_cross_entropy")


def _grads_of(fn, *tensors):
    """fn's value and the gradients of its inputs under a random upstream gradient."""
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=out.dtype)
    (out * g).sum().backward()
    return [out.detach()] + [t.grad for t in leaves]


@needs_torch_lce
@pytest.mark.parametrize("case", ["default_ignore", "probabilities", "probabilities_1d",
                                  "k_dim", "k_dim_bias", "class_weight", "unbatched",
                                  "options"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_same_results_as_torch_linear_cross_entropy(case, reduction):
    """Every call torch's F.linear_cross_entropy takes gives its loss and gradients."""
    F = torch.nn.functional
    gen = torch.Generator().manual_seed(zlib.crc32(case.encode()))
    x = torch.randn(13, 12, generator=gen, dtype=torch.float64)
    w = torch.randn(41, 12, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 41, (13,), generator=gen)
    t[::4] = -100  # ignored under the default ignore_index (None -> -100)
    kw = dict(reduction=reduction, label_smoothing=0.1)
    tensors, extra = [x, w], {}
    if case == "default_ignore":
        extra["ignore_index"] = None  # torch's default, spelled out
    elif case == "probabilities":
        t = torch.softmax(torch.randn(13, 41, generator=gen, dtype=torch.float64), -1)
    elif case == "probabilities_1d":
        x, t = x[0], torch.softmax(torch.randn(41, generator=gen, dtype=torch.float64), -1)
        tensors = [x, w]
    elif case in ("k_dim", "k_dim_bias"):
        w = torch.randn(7, 3, 12, generator=gen, dtype=torch.float64)
        t = torch.randint(0, 7, (13, 3), generator=gen)
        t[0, 1] = -100
        tensors = [x, w]
        if case == "k_dim_bias":
            tensors.append(torch.randn(7, 3, generator=gen, dtype=torch.float64))
    elif case == "class_weight":
        extra["weight"] = torch.rand(41, generator=gen, dtype=torch.float64)
    elif case == "unbatched":
        x, t = x[1], t[1]
        tensors = [x, w]
    elif case == "options":
        x, w = x.float(), w.float()  # the native path, in chunks of 4 rows
        tensors = [x, w]
        extra["options"] = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=4)

    def call(f):
        def run(x, w, b=None):
            return f(x, w, t, linear_bias=b, **kw, **extra)
        return run

    ours = _grads_of(call(linear_cross_entropy), *tensors)
    extra.pop("options", None)  # torch's chunked path differs from its reference by rounding
    theirs = _grads_of(call(F.linear_cross_entropy), *tensors)
    tol = 1e-5 if x.dtype == torch.float32 else 1e-10
    for name, a, b in zip(["loss", "dx", "dW", "db"], ours, theirs):
        assert a.shape == b.shape, name
        assert torch.allclose(a, b, rtol=tol, atol=tol), (case, name, _rel(a, b))


@needs_torch_lce
def test_probability_targets_refuse_ignore_index_and_take_z_loss():
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(6, 8, generator=gen, dtype=torch.float64)
    w = torch.randn(11, 8, generator=gen, dtype=torch.float64)
    p = torch.softmax(torch.randn(6, 11, generator=gen, dtype=torch.float64), -1)
    with pytest.raises(ValueError, match="ignore_index"):
        linear_cross_entropy(x, w, p, ignore_index=-100)
    with pytest.raises(ValueError, match="shaped like the logits"):
        linear_cross_entropy(x, w, p[:, :10])
    logits = x @ w.t()
    lse = torch.logsumexp(logits, -1)
    ref = (-(p * torch.log_softmax(logits, -1)).sum(-1) + 1e-2 * lse * lse).mean()
    assert torch.allclose(linear_cross_entropy(x, w, p, z_loss=1e-2), ref)


@needs_torch_lce
@pytest.mark.parametrize("out_features,bias,weighted", [((), False, False), ((), True, True),
                                                        ((3,), True, False)])
def test_loss_module_is_interchangeable_with_torchs(out_features, bias, weighted):
    """LinearCrossEntropyLoss takes torch.nn.LinearCrossEntropyLoss's arguments and state dict."""
    from fastlm.ops import LinearCrossEntropyLoss
    gen = torch.Generator().manual_seed(len(out_features) + 2 * bias)
    cw = torch.rand(17, generator=gen) if weighted else None
    kw = dict(out_features=out_features, bias=bias, weight=cw, label_smoothing=0.05)
    theirs = torch.nn.LinearCrossEntropyLoss(24, 17, **kw)
    ours = LinearCrossEntropyLoss(24, 17, **kw)
    ours.load_state_dict(theirs.state_dict())
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    x = torch.randn(10, 24, generator=gen, requires_grad=True)
    t = torch.randint(0, 17, (10, *out_features), generator=gen)
    t.view(-1)[3] = -100
    a, b = ours(x, t), theirs(x, t)
    assert torch.allclose(a, b, atol=1e-6), (a, b)
    ga = torch.autograd.grad(a, [x, ours.linear.weight])
    gb = torch.autograd.grad(b, [x, theirs.linear.weight])
    for u, v in zip(ga, gb):
        assert torch.allclose(u, v, atol=1e-6)
    assert "num_classes=17" in repr(ours)
    with pytest.raises(ValueError, match="weight"):
        LinearCrossEntropyLoss(24, 17, weight=torch.ones(5))


def test_bf16_cpu_and_module():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(24, 32, generator=gen).bfloat16()
    w = torch.randn(41, 32, generator=gen).bfloat16()
    t = torch.randint(0, 41, (24,), generator=gen)
    _check(x, w, t, reduction="mean", atol=2e-2, rtol=3e-2)
    crit = LinearCrossEntropy(z_loss=1e-4)
    assert crit(x.float(), w.float(), t).shape == ()


def test_half_weight_gradient_through_fp32_addmm(monkeypatch):
    """Where torch has addmm(out_dtype=float32) (CUDA), bf16 weight gradients go through one
    fp32-accumulating GEMM into the gradient itself. On CPU the op does not exist, so it is not
    used; with a stand-in that has its semantics, the call and the result are checked."""
    import fastlm.ops.cross_entropy as ce

    assert ce._addmm_fp32_ok(torch.device("cpu"), torch.bfloat16) is False
    calls = []
    real_addmm = torch.addmm

    def addmm(acc, a, b, *, beta=1.0, out_dtype=None, out=None, **kw):
        if out_dtype is None:
            return real_addmm(acc, a, b, beta=beta, out=out, **kw)
        assert out_dtype == torch.float32 and out is acc and acc.dtype == torch.float32
        calls.append((tuple(a.shape), tuple(b.shape), beta))
        prod = a.float() @ b.float()  # 16-bit products accumulated in fp32
        return out.copy_(prod) if beta == 0 else out.add_(prod)

    monkeypatch.setattr(ce, "_addmm_fp32_ok", lambda device, dtype: True)
    monkeypatch.setattr(torch, "addmm", addmm)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(37, 32, generator=gen).bfloat16()
    w = torch.randn(41, 32, generator=gen).bfloat16()
    t = torch.randint(0, 41, (37,), generator=gen)
    _check(x, w, t, reduction="mean", norm_tol=1.5e-2)
    # one call per 16-row chunk: dl^T (41 x rows) @ x_chunk (rows x 32), every row once; the
    # first writes the (uninitialized) gradient, the others add to it
    assert all(a == (41, b[0]) and b[1] == 32 for a, b, _ in calls), calls
    assert [(b[0], beta) for _, b, beta in calls] == [(16, 0.0), (16, 1.0), (5, 1.0)]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_weight_gradient_first_chunk_ignores_the_uninitialized_buffer(dtype, monkeypatch):
    """The fp32 weight-gradient accumulator is not zero-filled: the first chunk's GEMM writes it
    (beta = 0, which ignores NaN/inf in the output), later chunks add. Both the fp32 GEMM and the
    vocab-blocked half path (small blocks, so several of them)."""
    import fastlm.ops.cross_entropy as ce

    monkeypatch.setattr(ce, "_WGRAD_BLOCK", 16)
    gen = torch.Generator().manual_seed(3)
    dt = getattr(torch, dtype)
    dl = torch.randn(9, 41, generator=gen).to(dt)
    xc = torch.randn(9, 24, generator=gen).to(dt)
    want = dl.double().t() @ xc.double()
    tol = dict(rtol=1e-5, atol=1e-5) if dt == torch.float32 else dict(rtol=1e-2, atol=3e-2)
    gw = torch.full((41, 24), float("nan"))
    ce._accumulate_wgrad(gw, dl, xc, first=True)
    assert torch.allclose(gw.double(), want, **tol)  # (on CPU, 16-bit products round to 16 bits)
    ce._accumulate_wgrad(gw, dl, xc, first=False)
    assert torch.allclose(gw.double(), 2 * want, **tol)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_one_chunk_weight_gradient_is_one_gemm_in_the_weight_dtype(dtype):
    """Rows that fit one chunk: dW is one GEMM straight in the weight's dtype (no fp32 V x d
    buffer); it matches the float64 reference and the several-chunk fp32 accumulation."""
    gen = torch.Generator().manual_seed(11)
    dt = getattr(torch, dtype)
    x = torch.randn(40, 32, generator=gen).to(dt)
    w = torch.randn(53, 32, generator=gen).to(dt)
    t = torch.randint(0, 53, (40,), generator=gen)
    grads = []
    for chunk in (0, 16):  # 0: automatic, one chunk here
        xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
        linear_cross_entropy(xg, wg, t, chunk_size=chunk).backward()
        assert wg.grad.dtype == dt
        grads.append(wg.grad.double())
    wr = w.double().requires_grad_()
    linear_cross_entropy_ref(x.double(), wr, t).backward()
    tol = 1e-5 if dt == torch.float32 else 1e-2
    for g in grads:
        assert float((g - wr.grad).norm() / wr.grad.norm()) < tol
    # and no V x d fp32 tensor is made on the way (the accumulator, or a conversion's source)
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class Record(TorchDispatchMode):
        seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.seen += [(tuple(o.shape), o.dtype) for o in tree_leaves(out)
                          if isinstance(o, torch.Tensor)]
            return out

    with Record() as rec:
        linear_cross_entropy(x.clone().requires_grad_(), w.clone().requires_grad_(), t).backward()
    assert ((53, 32), torch.float32) not in rec.seen or dt == torch.float32
    assert ((53, 32), dt) in rec.seen


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if CUDA else []))
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_weight_gradient_in_vocab_blocks(device, dtype, monkeypatch):
    """bf16/fp16 weight gradients are accumulated in fp32 one vocab block at a time: blocks of
    16 rows over V=41 (two full blocks and a partial one) and chunks of 16 rows."""
    import fastlm.ops.cross_entropy as ce

    monkeypatch.setattr(ce, "_WGRAD_BLOCK", 16)
    monkeypatch.setattr(ce, "_addmm_fp32_ok", lambda device, dtype: False)  # the blocked path
    gen = torch.Generator().manual_seed(6)
    dt = getattr(torch, dtype)
    x = torch.randn(37, 32, generator=gen).to(dt).to(device)
    w = torch.randn(41, 32, generator=gen).to(dt).to(device)
    t = torch.randint(0, 41, (37,), generator=gen)
    t[::5] = -100
    _check(x, w, t.to(device), reduction="sum", norm_tol=1.5e-2 if dtype == "bfloat16" else 4e-3)


def test_mm_fp32_stops_asking_a_torch_without_out_dtype(monkeypatch):
    """On a torch whose mm has no out_dtype= (TypeError), the blocked weight gradient falls back to
    mm().float() and does not retry out_dtype for every block; the result is the product."""
    import fastlm.ops.cross_entropy as ce

    class Cuda(torch.Tensor):  # a CPU tensor that says it is on CUDA
        is_cuda = True

    calls = []
    real_mm = torch.mm

    def old_mm(a, b, **kw):
        calls.append(kw)
        if kw:
            raise TypeError("mm() got an unexpected keyword argument 'out_dtype'")
        return real_mm(a.as_subclass(torch.Tensor), b.as_subclass(torch.Tensor))

    monkeypatch.setattr(ce, "_MM_OUT_DTYPE", {"ok": True})
    monkeypatch.setattr(torch, "mm", old_mm)
    gen = torch.Generator().manual_seed(11)
    a = torch.randn(5, 3, generator=gen).to(torch.bfloat16)
    b = torch.randn(3, 4, generator=gen).to(torch.bfloat16)
    for _ in range(3):
        out = ce._mm_fp32(a.as_subclass(Cuda), b.as_subclass(Cuda))
        assert out.dtype == torch.float32
        # the fallback's product is rounded to bf16 (8 bits of mantissa) before .float()
        assert torch.allclose(out, (a.float() @ b.float()), rtol=2**-8, atol=1e-6)
    assert [bool(kw) for kw in calls] == [True, False, False, False]


def test_realistic_rows_and_vocab_against_chunked_float64_reference():
    """N=8192 rows, V=50304 (GPT-2's padded vocab) with the automatic chunking (22 chunks of 384
    rows on CPU) and fp32 weight-gradient accumulation over every row; d is kept at 16 so the
    float64 reference (summed over 512-row chunks with autograd, exact for sum) stays cheap."""
    gen = torch.Generator().manual_seed(11)
    n, d, v = 8192, 16, 50304
    x = torch.randn(n, d, generator=gen)
    w = 0.5 * torch.randn(v, d, generator=gen)
    t = torch.randint(0, v, (n,), generator=gen)
    t[::13] = -100
    xf, wf = x.clone().requires_grad_(), w.clone().requires_grad_()
    out = linear_cross_entropy(xf, wf, t, label_smoothing=0.1)
    out.backward()
    xr, wr = x.double().requires_grad_(), w.double().requires_grad_()
    total = torch.zeros((), dtype=torch.float64)
    for r0 in range(0, n, 512):
        part = linear_cross_entropy_ref(xr[r0:r0 + 512], wr, t[r0:r0 + 512], reduction="sum",
                                        label_smoothing=0.1)
        part.backward()
        total += part.detach()
    n_valid = int((t != -100).sum())
    ref = total / n_valid
    assert abs(float(out) - float(ref)) < 1e-5 * float(ref)
    assert _rel(xf.grad, xr.grad / n_valid) < 1e-5
    assert _rel(wf.grad, wr.grad / n_valid) < 1e-5


def test_backend_torch_and_class_weight_fallback():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(12, 8, generator=gen, dtype=torch.float64)
    w = torch.randn(41, 8, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 41, (12,), generator=gen)
    cw = torch.rand(41, generator=gen, dtype=torch.float64)
    F = torch.nn.functional
    ref = F.cross_entropy(x @ w.t(), t, weight=cw)
    assert torch.allclose(linear_cross_entropy(x, w, t, weight=cw), ref)
    _check(x, w, t, reduction="mean", atol=1e-10, rtol=1e-9)  # float64 -> torch path


@pytest.mark.parametrize("shape", [(0,), (2, 0)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_no_rows_match_torch(dtype, reduction, shape):
    """No tokens at all (an empty batch, T = 0): torch's loss (NaN mean, 0 sum, empty) and zero
    gradients. The backward used to fail: no chunk had written the weight gradient."""
    gen = torch.Generator().manual_seed(14)
    x = torch.randn(*shape, 16, generator=gen).to(dtype).requires_grad_()
    w = torch.randn(41, 16, generator=gen).to(dtype).requires_grad_()
    b = torch.randn(41, generator=gen).to(dtype).requires_grad_()
    t = torch.zeros(shape, dtype=torch.long)
    ours = linear_cross_entropy(x, w, t, linear_bias=b, reduction=reduction)
    ours.sum().backward()
    grads = [z.grad for z in (x, w, b)]
    for z in (x, w, b):
        z.grad = None
    ref = torch.nn.functional.cross_entropy(torch.nn.functional.linear(x, w, b).reshape(-1, 41),
                                            t.reshape(-1), reduction=reduction)
    ref = ref.reshape(t.shape) if reduction == "none" else ref
    ref.sum().backward()
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    assert torch.equal(ours.isnan(), ref.isnan()) and torch.equal(ours.nan_to_num(), ref.nan_to_num())
    for name, a, r in zip("xwb", grads, (x.grad, w.grad, b.grad)):
        assert a is not None and a.shape == r.shape and a.dtype == r.dtype and torch.equal(a, r), name


def _weighted_case(dtype, seed=12, n=37, d=24, v=41):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen).to(dtype).requires_grad_()
    w = (torch.randn(v, d, generator=gen) * 0.3).to(dtype).requires_grad_()
    b = (torch.randn(v, generator=gen) * 0.1).to(dtype).requires_grad_()
    t = torch.randint(0, v, (n,), generator=gen)
    t[::5] = -100
    cw = torch.rand(v, generator=gen) + 0.1
    g = torch.randn(n, generator=gen, dtype=torch.float64)
    return x, w, b, t, cw, g


def _weighted_ref(x, w, b, t, cw, reduction, softcap):
    xr, wr, br = (z.detach().double().requires_grad_() for z in (x, w, b))
    logits = xr @ wr.t() + br
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    out = torch.nn.functional.cross_entropy(logits, t, weight=cw.double(), reduction=reduction)
    return out, (xr, wr, br)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not CUDA, reason="needs a CUDA GPU and fastlm._cuda"))])
@pytest.mark.parametrize("softcap", [0.0, 4.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_class_weights_take_the_native_path(dtype, reduction, softcap, device, monkeypatch):
    """Class weights (without label smoothing or z-loss) are a per-row scale of the loss and its
    gradient: they run chunked on the native path (no full logits; several chunks here), against
    F.cross_entropy(weight=) in float64, with ignored rows, a bias and soft-capping; torch's mean
    divides by the counted rows' weight sum."""
    import fastlm.ops.cross_entropy as ce

    def no_reference(*args):
        raise AssertionError("class weights took the full-logits PyTorch path")

    monkeypatch.setattr(ce, "_reference", no_reference)
    x, w, b, t, cw, g = _weighted_case(dtype)
    x, w, b = (z.detach().to(device).requires_grad_() for z in (x, w, b))
    out = linear_cross_entropy(x, w, t.to(device), linear_bias=b, weight=cw.to(device),
                               reduction=reduction, softcap=softcap, chunk_size=8)
    ref, leaves = _weighted_ref(x.cpu(), w.cpu(), b.cpu(), t, cw, reduction, softcap)
    out = out.cpu()
    gg = g if reduction == "none" else g[0]
    (out.double() * gg).sum().backward()
    (ref * gg).sum().backward()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert _rel(out.detach().double(), ref.detach()) < tol
    if reduction == "none":
        assert bool((out[t == -100] == 0).all())
    for name, a, r in (("x", x.grad, leaves[0].grad), ("w", w.grad, leaves[1].grad),
                       ("b", b.grad, leaves[2].grad)):
        assert _rel(a.cpu(), r) < tol, name


def test_class_weights_second_backward_compile_and_zero_weights():
    """Weighted mean: a second backward through the graph (recomputed) gives the same gradients;
    torch.compile gives eager's loss; weights summing to 0 give NaN as torch's mean does; with
    label smoothing or z-loss the weights still take the (full-logits) PyTorch path, matching it."""
    x, w, b, t, cw, _ = _weighted_case(torch.float32, seed=13)
    out = linear_cross_entropy(x, w, t, linear_bias=b, weight=cw, chunk_size=8)
    out.backward(retain_graph=True)
    first = w.grad.clone()
    w.grad = None
    out.backward()
    assert _rel(w.grad, first) < 1e-6
    compiled = torch.compile(lambda x, w, t: linear_cross_entropy(x, w, t, weight=cw),
                             backend="aot_eager", fullgraph=True)
    assert torch.allclose(compiled(x, w, t), linear_cross_entropy(x, w, t, weight=cw), rtol=1e-6)
    torch.library.opcheck(torch.ops.fastlm.linear_cross_entropy.default,
                          (x.detach(), w.detach(), None, t, -100, "mean", 0.0, 0.0, 0.0, True, 0,
                           True, True, torch.rand(t.shape[0])))
    zero = torch.zeros_like(cw)
    with torch.no_grad():
        assert torch.isnan(linear_cross_entropy(x, w, t, weight=zero))
        assert torch.isnan(torch.nn.functional.cross_entropy(x @ w.t(), t, weight=zero))
    for kw in (dict(label_smoothing=0.1), dict(z_loss=1e-3)):
        with torch.no_grad():
            ours = linear_cross_entropy(x, w, t, linear_bias=b, weight=cw, **kw)
            theirs = linear_cross_entropy(x, w, t, linear_bias=b, weight=cw, backend="torch", **kw)
        assert torch.allclose(ours, theirs), kw


def test_no_grad_forward_and_torch_compile():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(20, 16, generator=gen)
    w = torch.randn(41, 16, generator=gen, requires_grad=True)
    t = torch.randint(0, 41, (20,), generator=gen)
    with torch.no_grad():
        a = linear_cross_entropy(x, w, t)
    for compute_grad, weight_grad, input_grad in ((False, False, False), (True, True, True),
                                                  (True, False, True), (True, True, False)):
        torch.library.opcheck(torch.ops.fastlm.linear_cross_entropy.default,
                              (x, w.detach(), None, t, -100, "mean", 0.0, 0.0, 0.0,
                               compute_grad, 0, weight_grad, input_grad))
    compiled = torch.compile(lambda x, w, t: linear_cross_entropy(x, w, t), backend="aot_eager",
                             fullgraph=True)
    b = compiled(x, w, t)
    b.backward()
    assert torch.allclose(a, b.detach()) and w.grad is not None


def test_traced_setup_saves_the_gradients_whatever_is_compiling_says(monkeypatch):
    """Under AOT autograd (torch.compile) the forward's gradients are saved as tensors and scaled
    by the incoming grad in the graph; eagerly they are handed over by reference. The choice is made
    on the outputs' type: torch 2.11 (seen on the GPU machine) reports is_compiling() False
    while it traces the joint graph, and the op then read a symbolic grad's value and failed to
    compile."""
    import types

    from torch._subclasses.fake_tensor import FakeTensorMode

    import fastlm.ops.cross_entropy as ce

    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)

    class Ctx(types.SimpleNamespace):
        def mark_non_differentiable(self, *a): pass
        def set_materialize_grads(self, v): pass
        def save_for_backward(self, *a): self.saved = a

    def setup(make):
        x, w, t = make(5, 16), make(41, 16), torch.zeros(5, dtype=torch.long)
        inputs = (x, w, None, t, -100, "mean", 0.0, 0.0, 0.0, True, 0, True, True, None)
        ctx = Ctx()
        ce._setup_context(ctx, inputs, (make(()), make(5, 16), make(41, 16), make(0)))
        return ctx

    eager = setup(torch.randn)
    assert not eager.saved_grads and eager.grads is not None
    with FakeTensorMode():
        traced = setup(torch.randn)
    assert traced.saved_grads and len(traced.saved) == 3


def _half_frozen_case(seed, frozen, reduction, compiled):
    """x (23 x 16), w (41 x 16) with only one of them requiring grad (`frozen` names the other),
    targets with one ignored row, the op (chunked by 8, compiled if asked) and the incoming
    gradient for `reduction`."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(23, 16, generator=gen, requires_grad=frozen != "input")
    w = torch.randn(41, 16, generator=gen, requires_grad=frozen != "weight")
    t = torch.randint(0, 41, (23,), generator=gen)
    t[3] = -100
    fn = lambda x, w, t: linear_cross_entropy(x, w, t, reduction=reduction, chunk_size=8)  # noqa
    if compiled:
        fn = torch.compile(fn, backend="aot_eager", fullgraph=True)
    g = torch.randn(23, generator=gen) if reduction == "none" else torch.tensor(1.0)
    return x, w, t, fn, g


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("compiled", [False, True])
def test_frozen_weight_gets_no_gradient(reduction, compiled, monkeypatch):
    """A weight that does not require grad (frozen head, LoRA) gets no V x d accumulator: the
    input's gradient still matches the reference, the weight's is None."""
    import fastlm.ops.cross_entropy as ce

    def no_wgrad(*args):
        raise AssertionError("weight gradient computed for a frozen weight")

    monkeypatch.setattr(ce, "_accumulate_wgrad", no_wgrad)
    x, w, t, fn, g = _half_frozen_case(9, "weight", reduction, compiled)
    (fn(x, w, t) * g).sum().backward()
    xr = x.detach().double().requires_grad_()
    (linear_cross_entropy_ref(xr, w.double(), t, reduction=reduction) * g.double()).sum().backward()
    assert w.grad is None
    assert torch.allclose(x.grad.double(), xr.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_input_without_grad_gets_no_input_gradient(reduction, compiled, monkeypatch):
    """An input that needs no gradient (e.g. only the head is trained) costs no dlogits @ W
    GEMM: the chunk loop makes no input gradient and (eager, watched at the dispatcher) no
    matmul takes W (V x d) as its second operand; the weight's gradient still matches the
    reference."""
    import fastlm.ops.cross_entropy as ce
    from torch.utils._python_dispatch import TorchDispatchMode

    made = []
    real_fused = ce._fused

    def spy(*args, **kwargs):
        out = real_fused(*args, **kwargs)
        made.append(out[1])  # the input's gradient (None when not computed)
        return out

    monkeypatch.setattr(ce, "_fused", spy)
    x, w, t, fn, g = _half_frozen_case(10, "input", reduction, compiled)

    class DxGemms(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket is torch.ops.aten.mm and tuple(args[1].shape) == (41, 16):
                DxGemms.count += 1  # dlogits (rows x V) @ W (V x d): the input's gradient
            return func(*args, **(kwargs or {}))

    if compiled:  # a dispatch mode cannot wrap torch.compile
        (fn(x, w, t) * g).sum().backward()
    else:
        with DxGemms():
            (fn(x, w, t) * g).sum().backward()
    assert made and all(gx is None for gx in made) and DxGemms.count == 0
    wr = w.detach().double().requires_grad_()
    (linear_cross_entropy_ref(x.double(), wr, t, reduction=reduction) * g.double()).sum().backward()
    assert x.grad is None
    assert torch.allclose(w.grad.double(), wr.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_backward_twice_with_retain_graph(reduction):
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(9, 16, generator=gen, requires_grad=True)
    w = torch.randn(41, 16, generator=gen, requires_grad=True)
    t = torch.randint(0, 41, (9,), generator=gen)
    t[2] = -100
    loss = linear_cross_entropy(x, w, t, reduction=reduction)
    loss.backward(retain_graph=True)
    g1x, g1w = x.grad.clone(), w.grad.clone()
    (loss * 3).backward()  # second pass recomputes (the forward's gradients were handed over)
    assert torch.allclose(x.grad, 4 * g1x, atol=1e-6) and torch.allclose(w.grad, 4 * g1w,
                                                                         atol=1e-6)


def test_backward_allocates_no_gradient_sized_buffer():
    """mean/sum hand the forward's gradients to autograd: the backward pass must not allocate
    (e.g. zeros for the op's gradient outputs, or a copy of the V x d weight gradient)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class Record(TorchDispatchMode):
        def __init__(self, limit):
            super().__init__()
            self.limit, self.seen = limit, []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for o in tree_leaves(out):
                if isinstance(o, torch.Tensor) and o.numel() >= self.limit:
                    self.seen.append(func.overloadpacket.__name__)
            return out

    n, d, v = 64, 32, 1000
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(n, d, generator=gen, requires_grad=True)
    w = (0.1 * torch.randn(v, d, generator=gen)).requires_grad_()
    t = torch.randint(0, v, (n,), generator=gen)
    loss = linear_cross_entropy(x, w, t)
    with Record(n * d) as rec:
        loss.backward()
    assert set(rec.seen) <= {"detach", "view", "alias"}, rec.seen
    ref = linear_cross_entropy_ref(x.detach().double().requires_grad_(), w.detach().double(), t)
    assert abs(float(loss) - float(ref)) < 1e-4 and x.grad is not None and w.grad is not None


@pytest.mark.parametrize("n,v,elem,cuda,expected", [
    (4096, 32768, 4, False, 512),    # 512 MB of fp32 logits: 8 chunks of 64 MB
    (8192, 50304, 4, False, 384),    # 25 chunks of 328 rows, rounded up to 384 (22 chunks)
    (8192, 50304, 2, True, 2048),    # CUDA bf16: 4 chunks of ~206 MB
    (1000, 41, 4, False, 1000),      # small: one chunk
    (1, 50304, 4, False, 1),
    (4097, 50304, 4, False, 320)])   # odd N: 13 chunks of 316 rows, rounded up to 320
def test_automatic_chunks_are_balanced_and_bounded(n, v, elem, cuda, expected):
    from fastlm.ops.cross_entropy import _chunk_rows

    assert _chunk_rows(n, v, elem, cuda, 0) == expected
    assert _chunk_rows(n, v, elem, cuda, 7) == min(7, n)  # an explicit chunk_size wins


def test_automatic_chunk_rule_over_many_sizes():
    """The rule's invariants on a grid of sizes (not just the pinned cases above): every chunk
    has rows, matmul-friendly counts, at most 64 rows over the budget, and there are no more
    chunks than the budget needs. (The last chunk can be small: 4097 rows -> 8 x 512 + 1.)"""
    from fastlm.ops.cross_entropy import _chunk_rows

    for n in (1, 7, 63, 64, 65, 1000, 4095, 4097, 8192, 16384, 100003):
        for v in (3, 41, 1009, 32768, 50304, 128256):
            for elem, cuda in ((4, False), (2, False), (2, True), (4, True)):
                rows = _chunk_rows(n, v, elem, cuda, 0)
                case = (n, v, elem, cuda, rows)
                # Checked before anything divides by rows; the upper bound is the rule's clamp
                # (without it n = 65, v = 3 gives 128 rows).
                assert 1 <= rows <= n, case
                budget = (256 if cuda else 64) << 20
                chunks = -(-n // rows)
                assert rows == n or rows % 64 == 0, case
                assert (rows - 64) * v * elem < budget, case  # over it by < 64 rows
                assert chunks <= max(1, -(-n * v * elem // budget)), case


def test_default_chunking_several_chunks_matches_reference():
    gen = torch.Generator().manual_seed(3)
    n, d, v = 1100, 8, 16000  # 70 MB of fp32 logits: two automatic chunks (576 + 524 rows)
    x = torch.randn(n, d, generator=gen)
    w = torch.randn(v, d, generator=gen)
    t = torch.randint(0, v, (n,), generator=gen)
    t[::7] = -100
    _check(x, w, t, chunk_size=0)


@pytest.mark.parametrize("bad", ["dtype", "shape", "target_range", "reduction", "smoothing",
                                 "target_dtype", "weight_shape", "chunk_size"])
def test_bad_arguments(bad):
    x, w, t = torch.randn(4, 8), torch.randn(10, 8), torch.tensor([1, 2, 3, 4])
    kw = {}
    if bad == "dtype":
        w = w.double()
    elif bad == "shape":
        t = t[:3]
    elif bad == "target_range":
        t = torch.tensor([1, 2, 10, -1])
    elif bad == "reduction":
        kw["reduction"] = "avg"
    elif bad == "smoothing":
        kw["label_smoothing"] = 1.5
    elif bad == "target_dtype":
        t = t.int()
    elif bad == "weight_shape":
        w = torch.randn(10, 7)
    elif bad == "chunk_size":
        kw["chunk_size"] = -1
    with pytest.raises((ValueError, TypeError)):
        linear_cross_entropy(x, w, t, **kw)


def test_native_kernel_rejects_bad_buffers():
    C = _dispatch.cpu_module()
    z = torch.randn(4, 10)
    t = torch.tensor([1, 2, 30, 4])
    lo, ls = torch.empty(4), torch.empty(4)
    with pytest.raises(ValueError):
        C.cross_entropy_chunk(z.numpy(), t.numpy(), lo.numpy(), ls.numpy(), None, 1.0, -100,
                              0.0, 0.0, 0.0, True, 0)
    with pytest.raises(ValueError):
        C.cross_entropy_chunk(z.numpy(), t[:3].numpy(), lo.numpy(), ls.numpy(), None, 1.0, -100,
                              0.0, 0.0, 0.0, True, 0)
    with pytest.raises(ValueError):
        C.cross_entropy_chunk(z.double().numpy(), t.numpy(), lo.numpy(), ls.numpy(), None, 1.0,
                              -100, 0.0, 0.0, 0.0, True, 0)


def _tiny_lm_losses(kernels, device, steps=50):
    """A 2-layer transformer LM trained `steps` steps; returns its losses (same seed for both).
    On CUDA, attention runs in bf16 with head dim 64 so that fastlm's flash kernel is used."""
    from fastlm.ops import attention
    torch.manual_seed(0)
    cuda = device == "cuda"
    V, d, T, B, H = (97, 128, 64, 4, 2) if cuda else (97, 32, 16, 4, 4)
    emb = torch.nn.Embedding(V, d).to(device)
    blocks = torch.nn.ModuleList()
    for _ in range(2):
        blocks.append(torch.nn.ModuleDict(dict(
            ln1=torch.nn.LayerNorm(d), qkv=torch.nn.Linear(d, 3 * d), proj=torch.nn.Linear(d, d),
            ln2=torch.nn.LayerNorm(d), fc=torch.nn.Linear(d, 4 * d), out=torch.nn.Linear(4 * d, d))))
    blocks = blocks.to(device)
    head = torch.nn.Linear(d, V, bias=False).to(device)
    params = list(emb.parameters()) + list(blocks.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=3e-3)
    # Learnable sequences: arithmetic progressions mod V with a random start and step.
    gen = torch.Generator().manual_seed(1)
    start = torch.randint(0, V, (steps, B, 1), generator=gen)
    step = torch.randint(1, 4, (steps, B, 1), generator=gen)
    data = (start + step * torch.arange(T + 1)) % V
    losses = []
    for s in range(steps):
        seq = data[s].to(device)
        h = emb(seq[:, :-1])
        for blk in blocks:
            q, k, v = blk["qkv"](blk["ln1"](h)).view(B, T, 3, H, d // H).permute(2, 0, 3, 1, 4)
            if cuda:
                q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
            if kernels == "fastlm":
                a = attention(q, k, v, is_causal=True)
            else:
                a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            a = a.float()
            h = h + blk["proj"](a.transpose(1, 2).reshape(B, T, d))
            h = h + blk["out"](torch.nn.functional.gelu(blk["fc"](blk["ln2"](h))))
        tgt = seq[:, 1:]
        if kernels == "fastlm":
            loss = linear_cross_entropy(h, head.weight, tgt)
        else:
            loss = torch.nn.functional.cross_entropy(head(h).reshape(-1, V), tgt.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_tiny_model_loss_parity_cpu():
    a = _tiny_lm_losses("fastlm", "cpu")
    b = _tiny_lm_losses("torch", "cpu")
    assert a[-1] < a[0] - 0.1
    for i, (x, y) in enumerate(zip(a, b)):
        assert abs(x - y) < 1e-3 * max(1.0, abs(y)), f"step {i}: {x} vs {y}"


# ----------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU and fastlm._cuda")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("opt", range(len(OPTIONS)))
@pytest.mark.parametrize("version", [1, 2, 3])
def test_cuda_matches_reference(dtype, reduction, opt, version, monkeypatch):
    """Every CE chunk kernel version (csrc/kernels/cross_entropy.cu) inside the whole op."""
    monkeypatch.setattr(sys.modules["fastlm.ops.cross_entropy"], "KERNEL_VERSION", version)
    dt = getattr(torch, dtype)
    for n, d, v in [(1, 16, 41), (37, 64, 1009), (130, 1023, 4099)]:
        gen = torch.Generator().manual_seed(n * 7 + opt)
        x = (torch.randn(n, d, generator=gen) / d**0.5 * 3).to("cuda", dt)
        w = torch.randn(v, d, generator=gen).to("cuda", dt)
        t = torch.randint(0, v, (n,), generator=gen)
        t[torch.rand(n, generator=gen) < 0.2] = OPTIONS[opt].get("ignore_index", -100)
        t[0] = v - 1
        t = t.cuda()
        tol = (dict(atol=1e-4, rtol=1e-3) if dt == torch.float32
               else dict(norm_tol=1.5e-2 if dt == torch.bfloat16 else 4e-3))
        _check(x, w, t, reduction=reduction, **tol, **OPTIONS[opt])


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU and fastlm._cuda")
def test_cuda_realistic_shape_bf16():
    gen = torch.Generator(device="cuda").manual_seed(0)
    n, d, v = 8192, 768, 50304
    x = torch.randn(n, d, device="cuda", generator=gen).bfloat16()
    w = (torch.randn(v, d, device="cuda", generator=gen) * 0.02).bfloat16()
    t = torch.randint(0, v, (n,), device="cuda", generator=gen)
    t[::7] = -100
    xf = x.clone().requires_grad_()
    wf = w.clone().requires_grad_()
    out = linear_cross_entropy(xf, wf, t)
    out.backward()
    xr = x.float().requires_grad_()
    wr = w.float().requires_grad_()
    ref = torch.nn.functional.cross_entropy(xr @ wr.t(), t)
    ref.backward()
    # bf16 logits (as eager bf16) vs fp32 logits: loss ~10.9 agrees to ~2e-3 relative
    assert abs(float(out.detach()) - float(ref.detach())) < 5e-3 * abs(float(ref.detach()))
    assert _rel(xf.grad, xr.grad) < 2e-2 and _rel(wf.grad, wr.grad) < 2e-2


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU and fastlm._cuda")
def test_tiny_model_loss_parity_cuda():
    a = _tiny_lm_losses("fastlm", "cuda")
    b = _tiny_lm_losses("torch", "cuda")
    print("loss parity cuda (fastlm, torch):", [(round(x, 4), round(y, 4)) for x, y in
                                                 zip(a[::10], b[::10])])
    assert a[-1] < a[0] - 0.5
    for i, (x, y) in enumerate(zip(a, b)):  # bf16 attention: rounding differences may grow
        assert abs(x - y) < 2e-2 * max(1.0, abs(y)), f"step {i}: {x} vs {y}"
