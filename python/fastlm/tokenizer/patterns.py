"""The pre-tokenization patterns: the published regex strings, exactly as tiktoken has them.

Names "gpt2" (r50k_base), "gpt4" (cl100k_base) and "o200k" (o200k_base) have native matchers
(ids 0, 1, 2 = ``fastlm::tokenizer::Pattern``); any other regex string is a custom pattern run
through the ``regex`` module (slower, but any tiktoken-style vocabulary works).
"""

from __future__ import annotations

from typing import Optional

# Copied verbatim from tiktoken_ext/openai_public.py (tiktoken 0.14).
GPT2_PATTERN = "'(?:[sdmt]|ll|ve|re)| ?\\p{L}++| ?\\p{N}++| ?[^\\s\\p{L}\\p{N}]++|\\s++$|\\s+(?!\\S)|\\s"
GPT4_PATTERN = "'(?i:[sdmt]|ll|ve|re)|[^\\r\\n\\p{L}\\p{N}]?+\\p{L}++|\\p{N}{1,3}+| ?[^\\s\\p{L}\\p{N}]++[\\r\\n]*+|\\s++$|\\s*[\\r\\n]|\\s+(?!\\S)|\\s"
O200K_PATTERN = "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

PATTERNS: dict[str, str] = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN, "o200k": O200K_PATTERN}
PATTERN_IDS: dict[str, int] = {"gpt2": 0, "gpt4": 1, "o200k": 2}  # fastlm::tokenizer::Pattern


def resolve_pattern(pattern: str) -> tuple[Optional[str], str]:
    """``(name or None, regex string)`` for a pattern name or a custom regex string.

    A custom string equal to a published one gets its name (so it can use the native matcher).

    >>> resolve_pattern("gpt4")[0]
    'gpt4'
    """
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"pattern must be one of {', '.join(PATTERNS)} or a regex string, got {pattern!r}")
    if pattern in PATTERNS:
        return pattern, PATTERNS[pattern]
    for name, pat in PATTERNS.items():
        if pat == pattern:
            return name, pat
    import regex

    try:
        regex.compile(pattern)
    except regex.error as e:
        raise ValueError(f"pattern is neither a name ({', '.join(PATTERNS)}) nor a valid regex: {e}") from None
    return None, pattern
