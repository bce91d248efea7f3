"""fastlm.posttrain: post-training on top of pretraining: built-in verifiable tasks (``tasks``), SFT,
reward models, DPO, PPO/GRPO/RLOO, and importing Hugging Face Llama checkpoints (``hf_import``).

Submodules are imported where used (``from fastlm.posttrain.tasks import get_task``): this package
imports nothing heavy on its own.
"""
