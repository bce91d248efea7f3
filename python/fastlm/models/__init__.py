"""Transformer models: `GPT` (causal LM) and `Encoder` (masked LM), with their dataclass configs.
Importing this package imports torch."""
from fastlm.models.config import (EncoderConfig, GPTConfig, RewardConfig, config_from_dict,
                                  config_to_dict, model_config_for)
from fastlm.models.encoder import Encoder
from fastlm.models.gpt import GPT


def build_model(config):
    """``GPT`` for a ``GPTConfig``, ``Encoder`` for an ``EncoderConfig``, ``RewardModel`` for a ``RewardConfig``."""
    if isinstance(config, RewardConfig):
        from fastlm.models.reward import RewardModel
        return RewardModel(config)
    if isinstance(config, GPTConfig):
        return GPT(config)
    if isinstance(config, EncoderConfig):
        return Encoder(config)
    raise TypeError(f"expected GPTConfig or EncoderConfig, got {type(config).__name__}")


__all__ = ["Encoder", "EncoderConfig", "GPT", "GPTConfig", "RewardConfig", "build_model", "config_from_dict",
           "config_to_dict", "model_config_for"]
