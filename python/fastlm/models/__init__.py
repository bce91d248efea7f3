"""Transformer models: `GPT` (causal LM), `Encoder` (masked LM), `RewardModel` (GPT + scalar head), with
their dataclass configs.
Importing this package imports torch."""
from fastlm.models.config import (EncoderConfig, GPTConfig, RewardConfig, config_from_dict,
                                  config_to_dict, model_config_for)
from fastlm.models.encoder import Encoder
from fastlm.models.gpt import GPT
from fastlm.models.reward import RewardModel


def build_model(config):
    """``GPT`` for a ``GPTConfig``, ``Encoder`` for an ``EncoderConfig``, ``RewardModel`` for a ``RewardConfig``."""
    if isinstance(config, RewardConfig):
        return RewardModel(config)
    if isinstance(config, GPTConfig):
        return GPT(config)
    if isinstance(config, EncoderConfig):
        return Encoder(config)
    raise TypeError(f"expected GPTConfig or EncoderConfig, got {type(config).__name__}")


__all__ = ["Encoder", "EncoderConfig", "GPT", "GPTConfig", "RewardConfig", "RewardModel", "build_model",
           "config_from_dict", "config_to_dict", "model_config_for"]
