"""fastlm.ops at the edges of torch's own functions: linear_cross_entropy against
F.linear_cross_entropy (loss and every gradient, or the same refusal) and attention against
F.scaled_dot_product_attention, for inputs torch takes that the fused paths once did not."""
import sys

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from reference_ops import attention_ref  # noqa: E402

from fastlm.ops import (LinearCrossEntropyLoss, _dispatch, attention,  # noqa: E402
                        linear_cross_entropy)


def _case(n=6, d=8, v=11, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen).to(dtype)
    w = torch.randn(v, d, generator=gen).to(dtype)
    b = torch.randn(v, generator=gen).to(dtype)
    t = torch.randint(0, max(v, 1), (n,), generator=gen)
    return x, w, b, t


def _run(fn, x, w, b, t, **kw):
    """fn's loss and the gradients of x, w, b (a fixed weighting of 'none' losses)."""
    x, w, b = (z.detach().clone().requires_grad_() for z in (x, w, b))
    out = fn(x, w, t, linear_bias=b, **kw)
    g = torch.linspace(0.5, 1.5, out.numel(), dtype=torch.float64).reshape(out.shape)
    (out.double() * g).sum().backward()
    return out.detach(), x.grad, w.grad, b.grad


def _assert_same(ours, ref, atol=1e-5):
    for name, a, r in zip(("loss", "input", "weight", "bias"), ours, ref):
        assert a.shape == r.shape and a.dtype == r.dtype, f"{name}: {a.dtype} vs {r.dtype}"
        torch.testing.assert_close(a, r, atol=atol, rtol=1e-4, equal_nan=True, msg=name)


# ----------------------------------------------------------------------------- cross-entropy
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_uint8_targets_are_taken_as_torch_does(reduction):
    """torch takes uint8 (Byte) class indices as well as int64; they were refused."""
    x, w, b, t = _case()
    ref = _run(F.linear_cross_entropy, x, w, b, t.to(torch.uint8), reduction=reduction)
    _assert_same(_run(linear_cross_entropy, x, w, b, t.to(torch.uint8), reduction=reduction), ref)
    with pytest.raises(TypeError, match="target must be int64 .*got torch.int32"):
        linear_cross_entropy(x, w, t.int())  # torch refuses int32 too


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_no_features_or_no_classes_match_torch(dtype, reduction):
    """d = 0 (logits = the bias) failed reshaping (..., 0) with -1; V = 0 with every target
    ignored reached the native kernel, which refuses an empty vocabulary."""
    x, w, b, t = _case(d=0, dtype=dtype)
    _assert_same(_run(linear_cross_entropy, x, w, b, t, reduction=reduction),
                 _run(F.linear_cross_entropy, x, w, b, t, reduction=reduction), atol=1e-2)
    x, w, b, _ = _case(v=0, dtype=dtype)
    t = torch.full((6,), -100)
    _assert_same(_run(linear_cross_entropy, x, w, b, t, reduction=reduction),
                 _run(F.linear_cross_entropy, x, w, b, t, reduction=reduction))


def test_ignore_index_must_be_an_integer():
    """torch refuses a float ignore_index; int() used to turn 0.5 into 0 silently."""
    x, w, _, t = _case()
    with pytest.raises(TypeError, match="ignore_index must be an integer, got 0.5"):
        linear_cross_entropy(x, w, t, ignore_index=0.5)
    t[0] = 3
    want = F.linear_cross_entropy(x, w, t, ignore_index=3)
    torch.testing.assert_close(linear_cross_entropy(x, w, t, ignore_index=torch.tensor(3)), want)


def test_elementwise_mean_is_torchs_deprecated_mean():
    x, w, _, t = _case()
    with pytest.warns(UserWarning, match="elementwise_mean' is deprecated"):
        got = linear_cross_entropy(x, w, t, reduction="elementwise_mean")
    torch.testing.assert_close(got, F.linear_cross_entropy(x, w, t))


@pytest.mark.parametrize("name", ["z_loss", "softcap"])
@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_z_loss_and_softcap_must_be_finite_and_not_negative(name, value):
    """NaN passed the `< 0` check (the native kernel then refused both options at once) and
    softcap=inf gave a NaN loss (inf * tanh(x / inf)); the message names the option."""
    x, w, _, t = _case()
    with pytest.raises(ValueError, match=f"^{name} must be a finite number >= 0 .*got {value}"):
        linear_cross_entropy(x, w, t, **{name: value})


def test_class_weights_float_any_dtype_on_every_path_integer_refused():
    """Class weights of another float dtype than the input worked on the native path but failed
    inside F.cross_entropy on the full-logits one (label smoothing): now both take them; integer
    class weights (torch refuses them) are refused naming `weight` instead of being cast."""
    x, w, _, t = _case(dtype=torch.bfloat16)
    cw = torch.rand(11, generator=torch.Generator().manual_seed(1)) + 0.5
    got = linear_cross_entropy(x, w, t, weight=cw, label_smoothing=0.1)
    want = F.linear_cross_entropy(x, w, t, weight=cw.bfloat16(), label_smoothing=0.1)
    torch.testing.assert_close(got, want)
    with pytest.raises(TypeError, match="weight .*must be floating point, got torch.int64"):
        linear_cross_entropy(x, w, t, weight=torch.ones(11, dtype=torch.long))


def test_meta_tensors_give_the_loss_shape():
    """Meta tensors (shape inference) failed reading the targets' values."""
    x, w, t = torch.empty(6, 8, device="meta"), torch.empty(11, 8, device="meta"), \
        torch.empty(6, dtype=torch.long, device="meta")
    for reduction, shape in (("mean", ()), ("none", (6,))):
        out = linear_cross_entropy(x, w, t, reduction=reduction)
        ref = F.linear_cross_entropy(x, w, t, reduction=reduction)
        assert out.device.type == "meta" and out.shape == ref.shape == shape
        assert out.dtype == ref.dtype


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtypes", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                    (torch.float32, torch.bfloat16)])
def test_autocast_matches_torch(dtypes, reduction):
    """Under CPU bf16 autocast torch runs F.linear in bf16 and the cross-entropy in float32: a
    float32 loss, gradients in each leaf's dtype. Ours ran in the inputs' dtype (float32 in,
    bf16-rounded gradients) and refused a bf16 input with a float32 weight (a model's
    activations under autocast with its float32 head weight)."""
    x, w, b, t = _case(n=9, d=16, v=37)
    t[2] = -100
    x, w, b = x.to(dtypes[0]), w.to(dtypes[1]), b.to(dtypes[1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = _run(F.linear_cross_entropy, x, w, b, t, reduction=reduction)
        ours = _run(linear_cross_entropy, x, w, b, t, reduction=reduction)
    assert ours[0].dtype == torch.float32
    _assert_same(ours, ref, atol=2e-3)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("extra", [{}, {"chunk_size": 2}, {"ignore_index": 0}, {"weight": True}])
def test_double_backward_matches_torch(reduction, extra):
    """backward(create_graph=True) (a gradient penalty) through the native path: the gradients
    were not differentiable ('element 0 of tensors does not require grad', or no autograd formula
    for the 'none' backward op)."""
    x, w, b, t = _case()
    t[1] = -100 if "ignore_index" not in extra else 0
    kw = dict(extra, reduction=reduction)
    if kw.pop("weight", False):
        kw["weight"] = torch.rand(11, generator=torch.Generator().manual_seed(2)) + 0.5
    results = []
    for fn in (linear_cross_entropy, F.linear_cross_entropy):
        xs, ws, bs = (z.detach().clone().requires_grad_() for z in (x, w, b))
        if fn is F.linear_cross_entropy:
            kw.pop("chunk_size", None)
        out = fn(xs, ws, t, linear_bias=bs, **kw)
        gx, gw = torch.autograd.grad(out.sum(), (xs, ws), create_graph=True)
        (gx.pow(2).sum() + gw.pow(3).sum()).backward()
        results.append((gx.detach(), gw.detach(), xs.grad, ws.grad, bs.grad))
    for name, a, r in zip(("gx", "gw", "x.grad", "w.grad", "b.grad"), *results):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-4, msg=name)


def test_double_backward_with_z_loss_and_softcap_matches_the_plain_computation():
    x, w, b, t = _case()
    grads = []
    for backend in ("auto", "torch"):
        xs, ws, bs = (z.detach().clone().requires_grad_() for z in (x, w, b))
        out = linear_cross_entropy(xs, ws, t, linear_bias=bs, z_loss=1e-2, softcap=3.0,
                                   backend=backend)
        gx, = torch.autograd.grad(out, xs, create_graph=True)
        gx.pow(2).sum().backward()
        grads.append((gx.detach(), ws.grad, bs.grad))
    for a, r in zip(*grads):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-4)


def test_inference_tensors_that_require_grad():
    """Tensors made in inference mode with requires_grad set, used outside it: torch returns a
    loss that needs no grad; the chunk loop's out= matmuls refused them."""
    with torch.inference_mode():
        x, w, b, t = (z.requires_grad_() if z.is_floating_point() else z for z in _case())
    for reduction in ("mean", "none"):
        ours = linear_cross_entropy(x, w, t, linear_bias=b, reduction=reduction)
        ref = F.linear_cross_entropy(x, w, t, linear_bias=b, reduction=reduction)
        assert not ours.requires_grad and not ref.requires_grad
        torch.testing.assert_close(ours, ref)


def test_module_repr_reads_like_torchs():
    ours = LinearCrossEntropyLoss(8, 11, bias=True, ignore_index=3, label_smoothing=0.1)
    theirs = torch.nn.LinearCrossEntropyLoss(8, 11, bias=True, ignore_index=3, label_smoothing=0.1)
    assert ours.extra_repr().startswith(theirs.extra_repr() + ", z_loss=0.0")
    ours.load_state_dict(theirs.state_dict())
    x, t = torch.randn(5, 8), torch.tensor([1, 3, 2, 10, 0])
    torch.testing.assert_close(ours(x, t), theirs(x, t))


def test_where_torch_is_lax_ours_refuses_or_stays_finite():
    """Kept on purpose: torch ignores a negative label_smoothing (ours refuses it); a 'mean'
    over rows whose class weights sum to 0 is NaN in both, but torch's gradients are NaN (an
    optimizer step would write them into the weights) and ours are 0, as for all-ignored rows."""
    x, w, b, t = _case()
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        linear_cross_entropy(x, w, t, label_smoothing=-0.1)
    loss, gx, gw, gb = _run(linear_cross_entropy, x, w, b, t, weight=torch.zeros(11))
    assert loss.isnan() and not gx.isnan().any() and not gw.isnan().any()
    assert _run(F.linear_cross_entropy, x, w, b, t, weight=torch.zeros(11))[1].isnan().all()


# ----------------------------------------------------------------------------- attention
class _OnCuda:
    """A CPU tensor that says it is on CUDA: kernel_supports' view of a GPU input."""

    is_cuda = True

    def __init__(self, t):
        self._t = t

    def __getattr__(self, name):
        return getattr(self._t, name)


@pytest.mark.parametrize("shape", [(0, 2, 2, 9), (1, 0, 2, 9)])
def test_kernel_not_taken_for_no_batch_or_no_heads(monkeypatch, shape):
    """B = 0 or Hq = 0 went to the CUDA kernel, which refuses them (a grid dimension of 0, null
    pointers): SDPA returns an empty output there."""
    monkeypatch.setattr(_dispatch, "cuda_module", lambda: object())
    kernel_supports = sys.modules["fastlm.ops.attention"].kernel_supports
    b, hq, hkv, t = shape
    q = _OnCuda(torch.empty(b, hq, t, 64, dtype=torch.bfloat16))
    k = v = _OnCuda(torch.empty(b, hkv, t, 64, dtype=torch.bfloat16))
    assert not kernel_supports(q, k, v, False)
    assert kernel_supports(*(_OnCuda(torch.empty(1, 2, 9, 64, dtype=torch.bfloat16)),) * 3, True)


@pytest.mark.parametrize("scale", [0.0, -0.5])
@pytest.mark.parametrize("tq, tk", [(7, 7), (5, 9)])
def test_causal_with_nonpositive_scale_is_the_softmax(scale, tq, tk):
    """torch's CPU SDPA returns NaN for is_causal with scale <= 0 (its math backend and an
    explicit mask do not); ours gives the softmax over the keys each query sees, with gradients."""
    gen = torch.Generator().manual_seed(tq + tk)
    q, k, v = (torch.randn(2, 3, n, 16, generator=gen) for n in (tq, tk, tk))
    g = torch.randn(2, 3, tq, 16, generator=gen, dtype=torch.float64)
    qa, ka, va = (z.clone().requires_grad_() for z in (q, k, v))
    out = attention(qa, ka, va, is_causal=True, scale=scale)
    (out.double() * g).sum().backward()
    qr, kr, vr = (z.double().requires_grad_() for z in (q, k, v))
    ref = attention_ref(qr, kr, vr, is_causal=True, scale=scale)
    (ref * g).sum().backward()
    for name, a, r in (("out", out, ref), ("dq", qa.grad, qr.grad), ("dk", ka.grad, kr.grad),
                       ("dv", va.grad, vr.grad)):
        torch.testing.assert_close(a.double(), r, atol=1e-5, rtol=1e-4, msg=name)
