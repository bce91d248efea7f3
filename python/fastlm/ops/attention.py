"""Flash attention (placeholder until the CUDA kernel lands): SDPA."""
import torch.nn.functional as F


def attention(q, k, v, *, is_causal=False, scale=None, enable_gqa=False):
    return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scale,
                                          enable_gqa=enable_gqa)
