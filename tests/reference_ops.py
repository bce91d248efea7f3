"""Float64 PyTorch references for the fused ops (the specification the kernels are tested against)."""
import torch


def linear_cross_entropy_ref(x, w, target, *, bias=None, reduction="mean", ignore_index=-100,
                             label_smoothing=0.0, z_loss=0.0, softcap=0.0):
    """Loss of softmax cross-entropy over x @ w.T (+ bias), written out term by term in float64."""
    x, w = x.double(), w.double()
    z = x.reshape(-1, x.shape[-1]) @ w.t()
    if bias is not None:
        z = z + bias.double()
    if softcap > 0:
        z = softcap * torch.tanh(z / softcap)
    t = target.reshape(-1)
    valid = t != ignore_index
    lse = torch.logsumexp(z, dim=-1)
    z_t = z.gather(1, t.clamp(0, z.shape[1] - 1)[:, None])[:, 0]
    loss = lse - (1 - label_smoothing) * z_t - label_smoothing * z.mean(dim=-1)
    loss = loss + z_loss * lse * lse
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    if reduction == "none":
        return loss.reshape(target.shape)
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / valid.sum()


def attention_ref(q, k, v, *, is_causal=False, scale=None):
    """softmax(q k^T * scale [+ causal mask]) v in float64; k/v heads repeat for GQA.
    q: (B, Hq, Tq, D), k/v: (B, Hkv, Tk, D) with Hq % Hkv == 0."""
    q, k, v = q.double(), k.double(), v.double()
    rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(rep, dim=1)
    v = v.repeat_interleave(rep, dim=1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = (q @ k.transpose(-1, -2)) * scale
    if is_causal:
        tq, tk = s.shape[-2], s.shape[-1]
        mask = torch.ones(tq, tk, dtype=torch.bool, device=s.device).tril()
        s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, dim=-1) @ v
