"""fastlm.tokenizer: byte-level BPE tokenizers (train, encode, decode, save/load, tiktoken/HF
interop), a sentencepiece backend behind the same interface, and the chat template."""

from fastlm.tokenizer.core import DEFAULT_SPECIALS, Tokenizer, load
from fastlm.tokenizer.formats import TokenizerFileError
from fastlm.tokenizer.patterns import PATTERNS

__all__ = ["DEFAULT_SPECIALS", "PATTERNS", "Tokenizer", "TokenizerFileError", "load"]
