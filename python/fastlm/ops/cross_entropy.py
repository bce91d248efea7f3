"""Fused linear + cross-entropy: loss and the input/weight gradients in one chunked pass.

The (tokens x vocab) logits are never materialized: rows are processed in chunks; each chunk's
logits go through a native kernel (``fastlm._C`` on CPU, ``fastlm._cuda`` on CUDA) that writes
loss, logsumexp and dlogits in place, and the gradients are projected back right away
(grad_input = dlogits @ W, grad_weight += dlogits^T @ x accumulated in fp32).
For reduction 'mean'/'sum' the gradients are computed during the forward pass (one pass, as in
Liger-Kernel); for 'none' the backward pass recomputes the chunks with the per-token grad_output.
Unsupported cases (class weights with label smoothing or z-loss, float64, other devices, no
native module) use plain PyTorch.
"""
from __future__ import annotations

import math
import operator
import warnings
from typing import Optional

import torch
import torch.nn.functional as F

from fastlm.ops import _dispatch

_REDUCTIONS = ("none", "mean", "sum")
# CUDA chunk kernel version (csrc/kernels/cross_entropy.cu header): 1 = scalar loads, 2 = 16-byte
# vector loads (the default: 1.1-1.7x faster than v1 alone, op 1.49-1.86x eager in bf16 on an H200;
# tools/gpu_check.sh times the versions side by side), 3 = the row held in registers (one read of
# the logits instead of two; not yet run on a GPU). FASTLM_CE_VERSION picks one at run time.
KERNEL_VERSION = _dispatch.kernel_version("FASTLM_CE_VERSION", 2, range(1, 4))


def _chunk_rows(n: int, v: int, elem: int, on_cuda: bool, chunk_size: int) -> int:
    """Rows per chunk: the rows split into equal chunks whose logits stay near a fixed budget
    (64 MB on CPU, 256 MB on CUDA; rows rounded up to a multiple of 64). Larger chunks mean
    fewer read-modify-write passes over the fp32 weight gradient and better-shaped matmuls
    (CPU, 4096 x 768 x 32768, 2 threads: 128-row chunks 2.92 s, 512-row 2.35 s fwd+bwd) at a
    memory cost that stays small next to eager's N x V logits."""
    if chunk_size > 0:
        return min(chunk_size, max(n, 1))
    budget = (256 << 20) if on_cuda else (64 << 20)
    chunks = max(1, -(-n * v * elem // budget))
    rows = -(-n // chunks)
    if rows > 64:
        rows = -(-rows // 64) * 64
    return max(1, min(rows, n))


# Vocab rows per weight-gradient product for bf16/fp16: bounds the fp32 temporary of each
# product at 8192 x d floats (24 MB at d=768) instead of a whole V x d one (154 MB at V=50304).
_WGRAD_BLOCK = 8192


# Whether this torch's mm takes out_dtype= (False once it raised TypeError: an older torch), so the
# chunk loop does not retry it for every block.
_MM_OUT_DTYPE = {"ok": True}


def _mm_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b with fp32 output for bf16/fp16 inputs (cuBLAS accumulates in fp32 either way)."""
    if a.is_cuda and _MM_OUT_DTYPE["ok"]:
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except TypeError:  # torch without mm(out_dtype=)
            _MM_OUT_DTYPE["ok"] = False
        except RuntimeError:  # this dtype / device pair without it
            pass
    return torch.mm(a, b).float()


# (device, dtype) -> whether torch.addmm(acc, a, b, out_dtype=float32, out=acc) works there and
# gives acc + a @ b: one cuBLAS GEMM with beta = 1 accumulating 16-bit products straight into the
# fp32 gradient (no temporary at all). CUDA-only in torch (aten::addmm.dtype), so it is checked
# once per device against float64 before it is trusted; otherwise the blocked path below is used.
_ADDMM_FP32: dict = {}


def _addmm_fp32_ok(device: torch.device, dtype: torch.dtype) -> bool:
    key = (str(device), dtype)
    if key not in _ADDMM_FP32:
        ok = False
        if device.type == "cuda":
            try:
                gen = torch.Generator(device=device).manual_seed(0)
                a, b, acc = (torch.randn(*shape, device=device, generator=gen)
                             for shape in ((37, 19), (19, 23), (37, 23)))
                a, b = a.to(dtype), b.to(dtype)
                prod = a.double() @ b.double()
                want = acc.double() + prod
                torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
                ok = bool(torch.allclose(acc.double(), want, rtol=1e-4, atol=1e-4))
                # beta = 0 (the first chunk) must ignore what is in the output, NaN included
                nan = torch.full_like(acc, float("nan"))
                torch.addmm(nan, a, b, beta=0.0, out_dtype=torch.float32, out=nan)
                ok = ok and bool(torch.allclose(nan.double(), prod, rtol=1e-4, atol=1e-4))
            except (RuntimeError, TypeError):  # torch without addmm(out_dtype=), or no out=
                ok = False
        _ADDMM_FP32[key] = ok
    return _ADDMM_FP32[key]


def _accumulate_wgrad(gw: torch.Tensor, dl: torch.Tensor, xc: torch.Tensor, first: bool) -> None:
    """gw (fp32) = dl^T @ xc on the first chunk (gw is uninitialized: beta = 0 ignores it, NaN
    included), gw += dl^T @ xc after. bf16/fp16: one fp32-accumulating GEMM into gw where torch
    has it (CUDA), else products in vocab blocks with fp32 outputs added into gw."""
    beta = 0.0 if first else 1.0
    if dl.dtype == torch.float32:
        gw.addmm_(dl.t(), xc, beta=beta)
        return
    if _addmm_fp32_ok(dl.device, dl.dtype):
        torch.addmm(gw, dl.t(), xc, beta=beta, out_dtype=torch.float32, out=gw)
        return
    for v0 in range(0, gw.shape[0], _WGRAD_BLOCK):
        v1 = min(gw.shape[0], v0 + _WGRAD_BLOCK)
        block = _mm_fp32(dl[:, v0:v1].t(), xc)
        if first:
            gw[v0:v1].copy_(block)
        else:
            gw[v0:v1].add_(block)


def _run_device_kernel(module, stream, logits, target, loss, lse, grad_scale, grad_scale_scalar,
                       ignore_index, label_smoothing, z_loss, softcap, write_grad,
                       version=None):
    """The CUDA chunk kernel through `module` (fastlm._cuda; tests pass fastlm._cuda_emu with
    CPU tensors): dlogits in place, in the logits' own dtype."""
    module.cross_entropy_chunk(
        logits.data_ptr(), _dispatch.dtype_code(logits.dtype), logits.shape[0],
        logits.shape[1], logits.stride(0), target.data_ptr(), loss.data_ptr(), lse.data_ptr(),
        0 if grad_scale is None else grad_scale.data_ptr(), float(grad_scale_scalar),
        int(ignore_index), float(label_smoothing), float(z_loss), float(softcap),
        bool(write_grad), int(KERNEL_VERSION if version is None else version), stream)
    return logits


def _run_chunk_kernel(logits, target, loss, lse, grad_scale, grad_scale_scalar, ignore_index,
                      label_smoothing, z_loss, softcap, write_grad):
    """Runs the native chunk kernel on `logits` in place; returns the tensor holding dlogits."""
    if logits.is_cuda:
        return _run_device_kernel(
            _dispatch.cuda_module(), _dispatch.stream_handle(logits.device), logits, target,
            loss, lse, grad_scale, grad_scale_scalar, ignore_index, label_smoothing, z_loss,
            softcap, write_grad)
    lf = logits if logits.dtype == torch.float32 else logits.float()
    _dispatch.cpu_module().cross_entropy_chunk(
        lf.numpy(), target.numpy(), loss.numpy(), lse.numpy(),
        None if grad_scale is None else grad_scale.numpy(), float(grad_scale_scalar),
        int(ignore_index), float(label_smoothing), float(z_loss), float(softcap),
        bool(write_grad), 0)
    return lf if lf.dtype == logits.dtype else lf.to(logits.dtype)


@torch.no_grad()  # custom ops see inference tensors with grad mode on (and requires_grad set)
def _fused(x, w, b, target, ignore_index, label_smoothing, z_loss, softcap, write_grad,
           grad_scale, grad_scale_scalar, chunk_size, weight_grad=True, input_grad=True):
    """Chunk loop. Returns per-row fp32 loss and, if write_grad, (gx, gw, gb fp32); gw is None
    without weight_grad (a frozen weight: no V x d accumulator, one matmul less), gx is None
    without input_grad (an input that needs no gradient: one matmul less). gw is fp32, or,
    when the rows fit one chunk, one GEMM's output in the weight's dtype (the GEMM accumulates in
    fp32 and rounds once, as the fp32 gradient's cast to that dtype would)."""
    n, d = x.shape
    v = w.shape[0]
    loss = torch.empty(n, dtype=torch.float32, device=x.device)
    lse = torch.empty(n, dtype=torch.float32, device=x.device)
    gx = torch.empty_like(x) if write_grad and input_grad else None
    gb = (torch.zeros(v, dtype=torch.float32, device=x.device)
          if (write_grad and b is not None) else None)
    rows = _chunk_rows(n, v, x.element_size(), x.is_cuda, chunk_size)
    # One chunk: dW = dl^T x is a single GEMM, written in the weight's dtype (no fp32 V x d
    # buffer, no conversion pass). Several: an fp32 accumulator, written (not zeroed) by the first.
    gw = None
    if write_grad and weight_grad and rows < n:
        gw = torch.empty(v, d, dtype=torch.float32, device=x.device)
    # One logits buffer for every chunk: a fresh allocation per chunk leaves freed chunks in
    # the CPU heap (glibc serves blocks under its mmap threshold from it) and raises peak RSS.
    buf = torch.empty(rows, v, dtype=x.dtype, device=x.device)
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        xc = x[r0:r1]
        logits = buf[:r1 - r0]
        if b is None:
            torch.mm(xc, w.t(), out=logits)
        else:
            torch.addmm(b, xc, w.t(), out=logits)
        gs = None if grad_scale is None else grad_scale[r0:r1]
        dl = _run_chunk_kernel(logits, target[r0:r1], loss[r0:r1], lse[r0:r1], gs,
                               grad_scale_scalar, ignore_index, label_smoothing, z_loss,
                               softcap, write_grad)
        if write_grad:
            if input_grad:
                torch.mm(dl, w, out=gx[r0:r1])
            if weight_grad and rows >= n:
                gw = torch.mm(dl.t(), xc)
            elif weight_grad:
                _accumulate_wgrad(gw, dl, xc, first=r0 == 0)
            if gb is not None:
                gb.add_(dl.sum(0, dtype=torch.float32))
    if write_grad and weight_grad and gw is None:  # no rows (n = 0): no chunk wrote it
        gw = torch.zeros(v, d, dtype=w.dtype, device=x.device)
    return loss, gx, gw, gb


def _reduce(loss_rows, target, ignore_index, reduction, dtype, row_weight=None):
    if reduction == "none":
        return loss_rows.to(dtype)
    total = loss_rows.sum()
    if reduction == "mean":  # 0/0 = nan when all are ignored (or weigh 0), as torch
        total = total / (row_weight.sum() if row_weight is not None else (target != ignore_index).sum())
    return total.to(dtype)


def _row_weights(weight: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Each row's class weight, weight[target] (0 for ignored rows), in fp32: class weights are a
    per-row scale of the loss and of its gradient, so they take the native path (torch's mean then
    divides by the rows' weight sum)."""
    valid = target != ignore_index
    return weight.float()[torch.where(valid, target, 0)] * valid


_EMPTY = (0,)


def _check_targets(target, v, ignore_index):
    bad = (target != ignore_index) & ((target < 0) | (target >= v))
    if bool(bad.any()):
        raise ValueError(f"target has values outside [0, {v}) that are not ignore_index")


@torch.library.custom_op("fastlm::linear_cross_entropy", mutates_args=())
def _lce_op(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], target: torch.Tensor,
            ignore_index: int, reduction: str, label_smoothing: float, z_loss: float,
            softcap: float, compute_grad: bool, chunk_size: int, weight_grad: bool,
            input_grad: bool, row_weight: Optional[torch.Tensor] = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss (float32: the wrapper casts it) and (for mean/sum with compute_grad) the
    unscaled-by-grad_output gradients.
    ``row_weight`` (class weights, `_row_weights`; only without label smoothing and z-loss)
    scales each row's loss and gradient."""
    _check_targets(target, w.shape[0], ignore_index)
    write_grad = compute_grad and reduction != "none"
    scale = 1.0
    if write_grad and reduction == "mean":
        total = (float(row_weight.sum()) if row_weight is not None
                 else int((target != ignore_index).sum()))
        scale = 1.0 / total if total != 0 else 0.0
    grad_scale = row_weight * scale if write_grad and row_weight is not None else None
    loss_rows, gx, gw, gb = _fused(x, w, b, target, ignore_index, label_smoothing, z_loss,
                                   softcap, write_grad, grad_scale, scale, chunk_size,
                                   weight_grad, input_grad)
    if row_weight is not None:
        loss_rows = loss_rows * row_weight
    loss = _reduce(loss_rows, target, ignore_index, reduction, torch.float32, row_weight)
    empty = x.new_empty(_EMPTY)
    if not write_grad:
        return loss, empty, empty.clone(), empty.clone()
    return (loss, empty.clone() if gx is None else gx,
            empty.clone() if gw is None else gw.to(w.dtype),
            empty.clone() if gb is None else gb.to(b.dtype))


@_lce_op.register_fake
def _(x, w, b, target, ignore_index, reduction, label_smoothing, z_loss, softcap, compute_grad,
      chunk_size, weight_grad, input_grad, row_weight=None):
    loss = x.new_empty((x.shape[0],) if reduction == "none" else (), dtype=torch.float32)
    write_grad = compute_grad and reduction != "none"
    if not write_grad:
        return loss, x.new_empty(_EMPTY), x.new_empty(_EMPTY), x.new_empty(_EMPTY)
    gb = x.new_empty(_EMPTY) if b is None else torch.empty_like(b)
    gw = torch.empty_like(w) if weight_grad else x.new_empty(_EMPTY)
    gx = torch.empty_like(x) if input_grad else x.new_empty(_EMPTY)
    return loss, gx, gw, gb


@torch.library.custom_op("fastlm::linear_cross_entropy_backward", mutates_args=())
def _lce_backward_op(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor],
                     target: torch.Tensor, grad_out: torch.Tensor, ignore_index: int,
                     label_smoothing: float, z_loss: float, softcap: float, chunk_size: int,
                     weight_grad: bool, input_grad: bool
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients for reduction='none': recomputes each chunk with per-row grad_output."""
    g = grad_out.reshape(-1).to(torch.float32).contiguous()
    _, gx, gw, gb = _fused(x, w, b, target, ignore_index, label_smoothing, z_loss, softcap,
                           True, g, 0.0, chunk_size, weight_grad, input_grad)
    empty = x.new_empty(_EMPTY)
    return (empty.clone() if gx is None else gx, empty.clone() if gw is None else gw.to(w.dtype),
            empty.clone() if gb is None else gb.to(b.dtype))


@_lce_backward_op.register_fake
def _(x, w, b, target, grad_out, ignore_index, label_smoothing, z_loss, softcap, chunk_size,
      weight_grad, input_grad):
    gb = x.new_empty(_EMPTY) if b is None else torch.empty_like(b)
    gw = torch.empty_like(w) if weight_grad else x.new_empty(_EMPTY)
    gx = torch.empty_like(x) if input_grad else x.new_empty(_EMPTY)
    return gx, gw, gb


def _setup_context(ctx, inputs, output):
    x, w, b, target, ignore_index, reduction, eps, zl, softcap, compute_grad, chunk, wg, ig = inputs[:13]
    rw = inputs[13] if len(inputs) > 13 else None  # row_weight (a default is not always passed)
    ctx.reduction, ctx.has_bias, ctx.compute_grad = reduction, b is not None, compute_grad
    ctx.weight_grad, ctx.input_grad = wg, ig
    ctx.args = (ignore_index, eps, zl, softcap, chunk)
    ctx.mark_non_differentiable(*output[1:])
    # The gradient outputs get no incoming gradient: without this autograd would allocate zeros
    # shaped like each of them (a V x d weight gradient's worth) before calling backward.
    ctx.set_materialize_grads(False)
    ctx.grads = None
    ctx.saved_grads = False
    if reduction == "none" or not compute_grad:
        ctx.save_for_backward(x, w, b, target, rw)  # recompute: nothing beyond the inputs is kept
    elif type(output[1]) is not torch.Tensor:
        # Traced: AOT autograd (torch.compile) hands fake / functional tensors here. Not
        # torch.compiler.is_compiling(): torch 2.11 answers False while it traces the joint graph.
        ctx.save_for_backward(*output[1:])  # gradients from the forward pass
        ctx.saved_grads = True
    else:
        # Eager: keep the forward's gradients off the saved-tensor list so that backward can
        # hand them to autograd as the only reference (AccumulateGrad then takes the buffer
        # instead of copying a V x d weight gradient). The inputs are saved too (no copy) for
        # a second backward (retain_graph), which recomputes.
        ctx.grads = list(output[1:])
        ctx.save_for_backward(x, w, b, target, rw)


def _backward(ctx, grad_loss, *unused):
    if grad_loss is None:  # possible without materialized grads: nothing flows back
        ctx.grads = None
        return (None,) * 14
    if not ctx.compute_grad:
        raise RuntimeError("linear_cross_entropy: gradients were not computed in the forward "
                           "pass (grad mode was off or no input required grad)")
    if torch.is_grad_enabled() and not ctx.saved_grads:  # backward(create_graph=True)
        ctx.grads = None
        return _grads_with_graph(ctx, grad_loss) + (None,) * 11
    ignore_index, eps, zl, softcap, chunk = ctx.args
    if ctx.saved_grads:  # saved under torch.compile
        gx, gw, gb = ctx.saved_tensors
        gx, gw, gb = gx * grad_loss, gw * grad_loss, gb * grad_loss
    elif ctx.grads is not None:
        gx, gw, gb = ctx.grads
        ctx.grads = None  # drop our references: autograd owns the buffers now
        # loss.backward() passes exactly 1; a traced grad has no value to test
        if type(grad_loss) is not torch.Tensor or float(grad_loss) != 1.0:
            gx, gw, gb = gx * grad_loss, gw * grad_loss, gb * grad_loss
    else:  # reduction='none', or a second backward through the same graph: recompute
        x, w, b, target, rw = ctx.saved_tensors
        g = grad_loss
        if ctx.reduction != "none":
            n = 1
            if ctx.reduction == "mean":
                n = rw.sum() if rw is not None else (target != ignore_index).sum()
            g = (grad_loss / n).expand(target.shape[0])
        if rw is not None:
            g = g * rw
        gx, gw, gb = _lce_backward_op(x, w, b, target, g, ignore_index, eps, zl, softcap, chunk,
                                      ctx.weight_grad, ctx.input_grad)
    return (gx if ctx.input_grad else None, gw if ctx.weight_grad else None,
            gb if ctx.has_bias else None, None, None, None, None, None, None, None, None, None,
            None, None)


def _grads_with_graph(ctx, grad_loss):
    """The input, weight and bias gradients as differentiable functions of the inputs (for a
    double backward: a gradient penalty, a Hessian-vector product), through the plain PyTorch
    computation: the kernels' gradients carry no graph."""
    x, w, b, target, rw = ctx.saved_tensors
    ignore_index, eps, zl, softcap, _ = ctx.args
    loss = _reference(x, w, b, target, None, "none", ignore_index, eps, zl, softcap)
    if rw is not None:
        loss = loss * rw
    if ctx.reduction != "none":
        loss = loss.sum()
    if ctx.reduction == "mean":
        loss = loss / (rw.sum() if rw is not None else (target != ignore_index).sum())
    wanted = [t is not None and t.requires_grad for t in (x, w, b)]
    grads = iter(torch.autograd.grad(loss, [t for t, want in zip((x, w, b), wanted) if want],
                                     grad_loss, create_graph=True))
    return tuple(next(grads) if want else None for want in wanted)


_lce_op.register_autograd(_backward, setup_context=_setup_context)


def _reference(x, w, b, target, weight, reduction, ignore_index, label_smoothing, z_loss,
               softcap):
    """Plain PyTorch path (full logits): the fallback for cases the kernels do not cover.

    x is (N, d) (or (d,) with K = 0); w is (V, d) or (V, d_1, ..., d_K, d) (K-dimensional loss);
    target holds class indices shaped like the logits without their class dim, or class
    probabilities shaped like the logits (floating point). The class dim of the logits is 1
    (0 for an unbatched input), as F.cross_entropy expects."""
    out_features = tuple(w.shape[1:-1])
    logits = F.linear(x, w.reshape(-1, w.shape[-1]), None if b is None else b.reshape(-1))
    logits = logits.reshape(*x.shape[:-1], w.shape[0], *out_features)
    if softcap > 0:
        logits = softcap * torch.tanh(logits / softcap)
    probabilities = target.is_floating_point()
    if weight is not None and _autocast_dtype(logits.device) is None:
        weight = weight.to(logits.dtype)  # any float dtype, as on the native path
    smooth = dict(label_smoothing=label_smoothing, weight=weight)
    if not probabilities:
        smooth["ignore_index"] = ignore_index
    if z_loss == 0:
        return F.cross_entropy(logits, target, reduction=reduction, **smooth)
    class_dim = 1 if x.dim() > 1 else 0
    lse = torch.logsumexp(logits.float(), dim=class_dim)
    counted = (torch.ones_like(lse, dtype=torch.bool) if probabilities
               else (target != ignore_index))
    zl = (z_loss * lse * lse * counted).to(logits.dtype)
    if reduction == "none":
        return F.cross_entropy(logits, target, reduction="none", **smooth) + zl
    ce = F.cross_entropy(logits, target, reduction=reduction, **smooth)
    # the z-loss is averaged over the counted tokens (class weights scale only the CE term)
    return ce + (zl.sum() if reduction == "sum" else zl.sum() / counted.sum())


# What autocast casts (float64 stays), and the loss dtypes it returns as float32 (cross-entropy
# runs in float32 under autocast).
_AUTOCAST_FROM = (torch.float32, torch.bfloat16, torch.float16)


def _autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """The dtype autocast computes F.linear in on `device` while it is on there, else None."""
    try:
        on = torch.is_autocast_enabled(device.type)
    except (RuntimeError, TypeError):  # a device type autocast does not know (meta)
        return None
    return torch.get_autocast_dtype(device.type) if on else None


def _native_ok(x: torch.Tensor) -> bool:
    if x.is_cuda:
        return (x.dtype in (torch.float32, torch.bfloat16, torch.float16)
                and _dispatch.cuda_module() is not None)
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16, torch.float16)
            and _dispatch.cpu_module() is not None)


def linear_cross_entropy(input: torch.Tensor, linear_weight: torch.Tensor, target: torch.Tensor,
                         *, linear_bias: Optional[torch.Tensor] = None,
                         weight: Optional[torch.Tensor] = None, reduction: str = "mean",
                         ignore_index: Optional[int] = None, label_smoothing: float = 0.0,
                         options=None, z_loss: float = 0.0, softcap: float = 0.0,
                         chunk_size: int = 0, backend: str = "auto") -> torch.Tensor:
    """Cross-entropy of ``input @ linear_weight.T (+ linear_bias)`` against ``target``, fused.

    A drop-in for ``torch.nn.functional.linear_cross_entropy`` (same arguments and results:
    ``ignore_index=None`` means -100 for class-index targets; class-probability targets and
    K-dimensional weights ``(V, d_1, ..., d_K, d)`` are accepted), which is
    ``F.cross_entropy(F.linear(input, linear_weight, linear_bias), target, ...)``. Added:
    ``z_loss`` (adds ``z_loss * logsumexp^2`` per counted token) and ``softcap`` (logits become
    ``softcap * tanh(logits / softcap)`` first). ``input`` may also be (..., d) with ``target``
    (...); ``reduction='none'`` returns per-token losses shaped like ``target`` (ignored tokens
    give 0). Under ``torch.autocast`` the projection runs in the autocast dtype and the loss is
    float32, as torch's. Class ``weight`` may be of any floating dtype (torch wants the
    input's). Where torch is lax this refuses: a negative ``label_smoothing`` (torch
    ignores it) and a non-integer ``ignore_index``; and a 'mean' over rows whose class weights sum
    to 0 gives a NaN loss with zero gradients (torch's gradients are NaN there, which an optimizer
    step would write into the weights).

    The native path (class-index targets, 2-D weight, class ``weight`` only without
    ``label_smoothing`` and ``z_loss``; float32, bfloat16 or float16 on CPU or CUDA) never holds
    the whole logits: it works in chunks of ``chunk_size``
    rows (0 = automatic; torch's ``options`` is accepted, and its ``batch_chunk_size`` is used
    when ``chunk_size`` is 0). Every other case, and ``backend='torch'``, runs the plain PyTorch
    computation.

    >>> import torch
    >>> x, w = torch.randn(8, 16, requires_grad=True), torch.randn(41, 16, requires_grad=True)
    >>> loss = linear_cross_entropy(x, w, torch.randint(0, 41, (8,)))
    >>> loss.backward()
    """
    if reduction == "elementwise_mean":  # torch's deprecated spelling, still accepted there
        warnings.warn("reduction='elementwise_mean' is deprecated. Please use reduction='mean' "
                      "instead.", stacklevel=2)
        reduction = "mean"
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if backend not in ("auto", "torch"):
        raise ValueError(f"backend must be 'auto' or 'torch', got {backend!r}")
    if not (0.0 <= label_smoothing <= 1.0):
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    for name, value in (("z_loss", z_loss), ("softcap", softcap)):
        if not 0.0 <= value < math.inf:  # NaN included
            raise ValueError(f"{name} must be a finite number >= 0 (0 = off), got {value}")
    if int(chunk_size) != chunk_size or chunk_size < 0:
        raise ValueError(f"chunk_size must be an integer >= 0 (0 = automatic), got {chunk_size!r}")
    if chunk_size == 0 and getattr(options, "batch_chunk_size", None):
        chunk_size = int(options.batch_chunk_size)
    for name, t in (("input", input), ("linear_weight", linear_weight), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if not input.is_floating_point() or input.dim() < 1:
        raise TypeError("input must be a floating-point tensor of shape (..., d)")
    if ignore_index is not None:
        try:
            ignore_index = operator.index(ignore_index)
        except TypeError:
            raise TypeError(f"ignore_index must be an integer, got {ignore_index!r}") from None
    cast = _autocast_dtype(input.device)
    if cast is not None:  # as autocast runs torch's: F.linear in `cast`, the loss in float32
        input, linear_weight, linear_bias = (
            t.to(cast) if t is not None and t.dtype in _AUTOCAST_FROM else t
            for t in (input, linear_weight, linear_bias))
    out = _linear_cross_entropy(input, linear_weight, target, linear_bias, weight, reduction,
                                ignore_index, label_smoothing, z_loss, softcap, chunk_size,
                                backend, autocast=cast is not None)
    return out.float() if cast is not None and out.dtype in _AUTOCAST_FROM else out


def _linear_cross_entropy(input, linear_weight, target, linear_bias, weight, reduction,
                          ignore_index, label_smoothing, z_loss, softcap, chunk_size, backend,
                          autocast):
    """linear_cross_entropy once its options are checked: the tensors' checks, then the path."""
    if linear_weight.dim() < 2 or linear_weight.shape[-1] != input.shape[-1]:
        raise ValueError(f"linear_weight must be (V, {input.shape[-1]}) (or (V, d_1, ..., d_K, "
                         f"{input.shape[-1]}) for a K-dimensional loss), "
                         f"got {tuple(linear_weight.shape)}")
    v, out_features = linear_weight.shape[0], tuple(linear_weight.shape[1:-1])
    if out_features and input.dim() != 2:
        raise ValueError(f"a K-dimensional linear_weight {tuple(linear_weight.shape)} needs "
                         f"input (N, {input.shape[-1]}), got {tuple(input.shape)}")
    logits_shape = (*input.shape[:-1], v, *out_features)
    probabilities = target.is_floating_point()
    if probabilities:
        if tuple(target.shape) != logits_shape:
            raise ValueError(f"class-probability target must be shaped like the logits "
                             f"{logits_shape}, got {tuple(target.shape)}")
        if ignore_index is not None:
            raise ValueError("ignore_index cannot be given with class-probability targets")
    elif target.dtype not in (torch.int64, torch.uint8):
        raise TypeError(f"target must be int64 (or uint8) class indices or floating-point class "
                        f"probabilities, got {target.dtype}")
    else:
        want = (input.shape[0], *out_features) if out_features else tuple(input.shape[:-1])
        if tuple(target.shape) != tuple(want):
            raise ValueError(f"target shape {tuple(target.shape)} does not match input "
                             f"{tuple(input.shape)} without its last dim"
                             + (f" and the weight's {out_features}" if out_features else ""))
        target = target.long()  # uint8 class indices, as torch takes them
    ignore_index = -100 if ignore_index is None else ignore_index
    for name, t in (("linear_weight", linear_weight), ("target", target),
                    ("linear_bias", linear_bias), ("weight", weight)):
        if t is not None and t.device != input.device:
            raise ValueError(f"{name} is on {t.device}, input on {input.device}")
    for name, t in (("linear_weight", linear_weight), ("linear_bias", linear_bias)):
        if t is not None and t.dtype != input.dtype:
            raise TypeError(f"{name} dtype {t.dtype} differs from input dtype {input.dtype}")
    if linear_bias is not None and tuple(linear_bias.shape) != (v, *out_features):
        raise ValueError(f"linear_bias must be {(v, *out_features)}, "
                         f"got {tuple(linear_bias.shape)}")
    if weight is not None and tuple(weight.shape) != (v,):
        raise ValueError(f"weight (per-class) must be ({v},), got {tuple(weight.shape)}")
    if weight is not None and not weight.is_floating_point():
        raise TypeError(f"weight (per-class) must be floating point, got {weight.dtype}")
    if (not probabilities and target.device.type != "meta"
            and not torch.compiler.is_compiling()):
        # data-dependent: the op checks again when compiled
        _check_targets(target, v, ignore_index)
    if probabilities or out_features:
        return _reference(input, linear_weight, linear_bias, target, weight, reduction,
                          ignore_index, label_smoothing, z_loss, softcap)
    x2 = input.reshape(target.numel(), input.shape[-1])  # not -1: d may be 0
    t1 = target.reshape(-1)
    weighted = weight is not None
    if (backend == "torch" or not _native_ok(input) or v == 0
            or weighted and (label_smoothing > 0 or z_loss > 0 or weight.requires_grad)):
        out = _reference(x2, linear_weight, linear_bias, t1, weight, reduction, ignore_index,
                         label_smoothing, z_loss, softcap)
    else:
        compute_grad = torch.is_grad_enabled() and (
            input.requires_grad or linear_weight.requires_grad
            or (linear_bias is not None and linear_bias.requires_grad))
        out = _lce_op(x2.contiguous(), linear_weight.contiguous(),
                      None if linear_bias is None else linear_bias.contiguous(),
                      t1.contiguous(), ignore_index, reduction, float(label_smoothing),
                      float(z_loss), float(softcap), bool(compute_grad), int(chunk_size),
                      bool(linear_weight.requires_grad), bool(input.requires_grad),
                      _row_weights(weight, t1, ignore_index) if weighted else None)[0]
        out = out if autocast else out.to(input.dtype)  # autocast: a float32 loss, as torch's
    return out.reshape(target.shape) if reduction == "none" else out


class LinearCrossEntropy(torch.nn.Module):
    """Module form of :func:`linear_cross_entropy` (options fixed at construction; the weight
    comes with each call). :class:`LinearCrossEntropyLoss` is the form that owns its weight.

    >>> import torch
    >>> crit = LinearCrossEntropy(ignore_index=-100, z_loss=1e-4)
    >>> crit(torch.randn(4, 8), torch.randn(10, 8), torch.tensor([1, 2, -100, 3])).shape
    torch.Size([])
    """

    def __init__(self, *, reduction: str = "mean", ignore_index: int = -100,
                 label_smoothing: float = 0.0, z_loss: float = 0.0, softcap: float = 0.0,
                 chunk_size: int = 0, backend: str = "auto"):
        super().__init__()
        self.options = dict(reduction=reduction, ignore_index=ignore_index,
                            label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
                            chunk_size=chunk_size, backend=backend)

    def forward(self, input, linear_weight, target, linear_bias=None):
        return linear_cross_entropy(input, linear_weight, target, linear_bias=linear_bias,
                                    **self.options)


class LinearCrossEntropyLoss(torch.nn.Module):
    """Drop-in for ``torch.nn.LinearCrossEntropyLoss``: the criterion owns its projection.

    Same constructor and state dict as torch's (``linear``, an ``nn.Linear(in_features,
    num_classes * prod(out_features))``, and the per-class ``weight`` buffer), so a state dict
    saved from one loads into the other; ``forward(input, target)`` runs
    :func:`linear_cross_entropy`, which also takes ``z_loss``, ``softcap``, ``chunk_size`` and
    ``backend`` here.

    >>> import torch
    >>> crit = LinearCrossEntropyLoss(8, 10)
    >>> crit(torch.randn(4, 8), torch.tensor([1, 2, -100, 3])).shape
    torch.Size([])
    """

    def __init__(self, in_features: int, num_classes: int, *, out_features: tuple = (),
                 bias: bool = False, device=None, dtype=None, reduction: str = "mean",
                 weight: Optional[torch.Tensor] = None, ignore_index: Optional[int] = None,
                 label_smoothing: float = 0.0, options=None, z_loss: float = 0.0,
                 softcap: float = 0.0, chunk_size: int = 0, backend: str = "auto"):
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        if weight is not None and tuple(weight.shape) != (num_classes,):
            raise ValueError(f"weight must be ({num_classes},), got {tuple(weight.shape)}")
        if not (0.0 <= label_smoothing <= 1.0):
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        self.register_buffer("weight", weight)
        self.num_classes, self.out_features = num_classes, tuple(out_features)
        self.reduction, self.ignore_index = reduction, ignore_index
        self.label_smoothing, self.options = label_smoothing, options
        self.extra = dict(z_loss=z_loss, softcap=softcap, chunk_size=chunk_size, backend=backend)
        n_out = num_classes
        for k in self.out_features:
            n_out *= k
        self.linear = torch.nn.Linear(in_features, n_out, bias=bias, device=device, dtype=dtype)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        shape = (self.num_classes, *self.out_features)
        bias = self.linear.bias
        return linear_cross_entropy(
            input, self.linear.weight.reshape(*shape, self.linear.in_features), target,
            linear_bias=None if bias is None else bias.reshape(shape), weight=self.weight,
            reduction=self.reduction, ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing, options=self.options, **self.extra)

    def extra_repr(self) -> str:
        return (f"in_features={self.linear.in_features}, num_classes={self.num_classes}, "
                f"out_features={self.out_features}, bias={self.linear.bias is not None}, "
                f"reduction={self.reduction}, ignore_index={self.ignore_index}, "
                f"label_smoothing={self.label_smoothing}, options={self.options}, "
                + ", ".join(f"{k}={v}" for k, v in self.extra.items()))

