"""fastlm: train a language model from scratch, with a native C++/CUDA core.

The public API is listed here explicitly; submodules hold the stages:
``fastlm.data`` (read, normalize, filter, dedup), ``fastlm.tokenizer`` (byte-level BPE, chat
template, token shards) and ``fastlm.ops`` (fused kernels; needs torch).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
