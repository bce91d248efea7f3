"""Fused ops for training: linear + cross-entropy (CPU and CUDA) and flash attention (CUDA).

Each op picks the fastest available path: the CUDA module ``fastlm._cuda`` for CUDA tensors,
the native CPU kernel in ``fastlm._C`` for CPU tensors, and plain PyTorch otherwise or for
unsupported options. Importing this package imports torch.
"""
from fastlm.ops.attention import attention
from fastlm.ops.cross_entropy import (LinearCrossEntropy, LinearCrossEntropyLoss,
                                      linear_cross_entropy)

__all__ = ["LinearCrossEntropy", "LinearCrossEntropyLoss", "attention", "linear_cross_entropy"]
