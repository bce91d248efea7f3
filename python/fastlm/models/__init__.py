"""Transformer models: `GPT` (causal LM) and `Encoder` (masked LM), with their dataclass configs.
Importing this package imports torch."""
from fastlm.models.config import EncoderConfig, GPTConfig
from fastlm.models.encoder import Encoder
from fastlm.models.gpt import GPT

__all__ = ["Encoder", "EncoderConfig", "GPT", "GPTConfig"]
