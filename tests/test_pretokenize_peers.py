"""The native pre-tokenizer against the peers whose encodings fastlm's must equal, on every code point.

tests/test_pretokenize.py compares with `regex.findall`; the peers run other engines with their own
Unicode data: tiktoken (Rust `regex`) and Hugging Face tokenizers (Oniguruma). A character whose class
differs between those and the native tables (a letter new in a later Unicode, a space the engines
define differently) splits a text differently, and then every id after it can differ. These tests put
every code point in contexts that reach each class the patterns use, and compare the pieces.
"""

import numpy as np
import pytest

from fastlm import _C
from fastlm.tokenizer.hf import onig_pattern
from fastlm.tokenizer.patterns import PATTERN_IDS as IDS, PATTERNS

tiktoken = pytest.importorskip("tiktoken")
tokenizers = pytest.importorskip("tokenizers")

_CPS = np.arange(0x110000)
# Every code point but the surrogates (the peers take no lone surrogates: str -> UTF-8 fails), and in
# planes 4-16 (unassigned but for tags, variation selectors and private use) every 31st one: those
# ranges are uniform, and the CI's time goes to the planes where the classes change.
CPS = _CPS[((_CPS < 0xD800) | (_CPS >= 0xE000)) & ((_CPS < 0x40000) | (_CPS % 31 == 0) | ((_CPS >= 0xE0000) & (_CPS < 0xE0200)))]


def context(cp: int) -> str:
    """One code point after and before characters of every class the three patterns use: a lowercase
    and an uppercase letter, a digit, a tab, a space, punctuation, an apostrophe, a combining mark, and
    itself (a run of two)."""
    x = chr(cp)
    return f"a{x}A{x}1{x}\t{x}!{x}{x} {x}'{x}a\u0301{x}s"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PATTERNS))
def test_every_code_point_matches_hf_tokenizers(name):
    """Each code point of CPS in `context`, 1,000 contexts per text: the pieces equal tokenizers' Split with
    the pattern as `Tokenizer.save_hf` writes it (`onig_pattern`)."""
    split = tokenizers.pre_tokenizers.Split(tokenizers.Regex(onig_pattern(PATTERNS[name])), behavior="isolated")
    texts = ["".join(context(c) for c in CPS[i:i + 1000]) for i in range(0, len(CPS), 1000)]
    ours = _C.tok_pretokenize(texts, IDS[name], 0)
    for i, (text, pieces) in enumerate(zip(texts, ours)):
        theirs = [p for p, _ in split.pre_tokenize_str(text)]
        if theirs != pieces:  # name the first code point whose context differs
            for c in CPS[i * 1000:(i + 1) * 1000]:
                one = context(c)
                assert [p for p, _ in split.pre_tokenize_str(one)] == _C.tok_pretokenize([one], IDS[name])[0], \
                    f"U+{c:04X} ({name}): Unicode {_C.TOK_UNICODE_VERSION} tables vs tokenizers"
            assert theirs == pieces, (name, i)  # differs only across contexts


def _split_by_tiktoken(name: str, texts: list[str]) -> np.ndarray:
    """For two-character texts: True where tiktoken keeps the text one piece. The ranks hold every
    prefix of every text's UTF-8 (all starting with the same first character, so no merge applies
    across a piece boundary): a text tiktoken keeps whole encodes to one token, a split one to two or more."""
    ranks = {bytes([i]): i for i in range(256)}
    for t in texts:
        b = t.encode()
        for k in range(2, len(b) + 1):
            ranks.setdefault(b[:k], len(ranks))
    enc = tiktoken.Encoding(f"probe-{name}", pat_str=PATTERNS[name], mergeable_ranks=ranks, special_tokens={})
    return np.array([len(ids) == 1 for ids in enc.encode_ordinary_batch(texts, num_threads=2)])


@pytest.mark.slow
@pytest.mark.parametrize("first", ["a", "A", "1", "\t"])
def test_code_points_split_as_tiktoken_splits_them(first):
    """`first` + a code point: whole or split as tiktoken decides, under every pattern (letters, lower
    and upper case classes, digits, spaces). The code points of CPS up to U+33FF (the scripts, spaces and
    punctuation), every 11th one above (letters of later Unicode versions included)."""
    cps = CPS[(CPS < 0x3400) | (CPS % 11 == 0)]
    texts = [first + chr(c) for c in cps]
    for name in PATTERNS:
        theirs = _split_by_tiktoken(name, texts)
        ours = np.array([len(p) == 1 for p in _C.tok_pretokenize(texts, IDS[name], 0)])
        bad = cps[theirs != ours]
        assert not bad.size, (f"{name}: {first!r} + U+{bad[0]:04X} ({bad.size} code points): "
                              f"Unicode {_C.TOK_UNICODE_VERSION} tables vs tiktoken")
