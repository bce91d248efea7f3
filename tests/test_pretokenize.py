"""Native pre-tokenizer (csrc/tokenizer/pretokenize.cpp) vs `regex.findall` with tiktoken's pattern strings."""

import collections
import glob
import importlib.util
import inspect
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from corpora import PYDOC, shakespeare_texts
from fastlm import _C

# The published pattern strings, exactly as tiktoken 0.14 has them (tiktoken_ext/openai_public.py).
PATTERNS = {
    "gpt2": r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""",
    "gpt4": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
    "o200k": "|".join([
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]),
}
IDS = {"gpt2": 0, "gpt4": 1, "o200k": 2}
COMPILED = {name: regex.compile(p) for name, p in PATTERNS.items()}
NAMES = list(PATTERNS)

# Characters that exercise every branch: contraction letters in both cases (and U+017F, which
# (?i) folds to s), whitespace of every kind, digits of other scripts, marks, cased/uncased letters,
# CJK, RTL, emoji with ZWJ and variation selectors, punctuation incl. '/', lone surrogates.
ALPHABET = (
    "aAbZxsStTdDmMlLvVrReEſ'' '"
    " \t\n\r\x0b\x0c\x1c\x85\u00a0\u1680\u2000\u200a\u2028\u2029\u202f\u205f\u3000"
    "0159٣۴७๓߀²½Ⅻ〇"
    "\u0301\u0300\u20dd\u0903éÉΣσςßǅʰªᵃ"
    "あア漢字한국어שלוםمرحبا"
    "\U0001F600\U0001F468\u200d\U0001F469\ufe0f\U0001F3FB\u200c"
    ".,;:!?/-_()[]{}#@$%^&*+=<>|\\~`\"\x00\x7f"
    "\ud800\udc00\udfff"
)


def regex_pieces(name, text):
    return COMPILED[name].findall(text)


def native(texts, name, threads=1):
    return _C.tok_pretokenize(list(texts), IDS[name], threads)


_NEWER = None


def newer_code_points() -> np.ndarray:
    """Code points the running `regex` knows but the native tables (an older Unicode) do not, and those
    whose classes changed since the tables' version."""
    global _NEWER
    if _NEWER is None:
        gen = load_generator()
        table = np.frombuffer(_C.tok_unicode_flags(), dtype=np.uint8)
        now = np.frombuffer(bytes(gen.compute_flags()), dtype=np.uint8)
        newer = np.nonzero((table & 32 == 0) & (now & 32 != 0))[0]
        _NEWER = np.union1d(newer, np.array(gen.changed_since(_C.TOK_UNICODE_VERSION), dtype=np.int64))
    return _NEWER


def comparable(text: str) -> str:
    """text with characters assigned (or reclassified) after the tables' Unicode version replaced by U+E000
    (private use: no letter/number/space class in either), so a newer `regex` compares on what both know."""
    newer = newer_code_points()
    if not newer.size:
        return text
    cps = np.fromiter(map(ord, text), dtype=np.int64, count=len(text))
    hit = np.isin(cps, newer)
    if not hit.any():
        return text
    return "".join("\ue000" if h else c for c, h in zip(text, hit))


def assert_same(name, texts, threads=1):
    texts = [comparable(t) for t in texts]
    got = native(texts, name, threads)
    for text, pieces in zip(texts, got):
        expected = regex_pieces(name, text)
        if pieces != expected:
            i = next((k for k, (a, b) in enumerate(zip(pieces, expected)) if a != b), min(len(pieces), len(expected)))
            raise AssertionError(f"{name}: first difference at piece {i}: native {pieces[i:i + 5]!r} "
                                 f"regex {expected[i:i + 5]!r} in {text[:200]!r}")


def test_patterns_are_tiktokens():
    tiktoken_ext = pytest.importorskip("tiktoken_ext.openai_public")
    source = inspect.getsource(tiktoken_ext)
    assert PATTERNS["gpt2"] == tiktoken_ext.r50k_pat_str
    assert PATTERNS["gpt4"] in source
    for part in PATTERNS["o200k"].split("|"):
        assert part in source


def load_generator():
    path = os.path.join(os.path.dirname(__file__), "..", "tools", "gen_unicode_tables.py")
    spec = importlib.util.spec_from_file_location("gen_unicode_tables", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_unicode_tables_match_regex_for_every_code_point():
    gen = load_generator()
    table = np.frombuffer(_C.tok_unicode_flags(), dtype=np.uint8)
    now = np.frombuffer(bytes(gen.compute_flags()), dtype=np.uint8)
    assert table.shape == now.shape == (0x110000,)
    assigned = 32
    # Code points unassigned in the tables' Unicode version but assigned in the running one (a newer
    # `regex` than the generator's): skipped here and in the piece comparisons (see comparable()).
    newer = (table & assigned == 0) & (now & assigned != 0)
    # ... and those whose classes changed between the two versions (recorded in the generator).
    changed = np.zeros_like(newer)
    changed[gen.changed_since(_C.TOK_UNICODE_VERSION)] = True
    print(f"tables: Unicode {_C.TOK_UNICODE_VERSION}, regex: Unicode {gen.unicode_version()}, "
          f"skipped {int(newer.sum())} newly assigned and {int(changed.sum())} changed code points")
    diff = np.nonzero((table != now) & ~newer & ~changed)[0]
    assert diff.size == 0, [(hex(cp), table[cp], now[cp]) for cp in diff[:20]]


def test_committed_tables_are_the_generators_output(tmp_path):
    gen = load_generator()
    if _C.TOK_UNICODE_VERSION != gen.unicode_version() or newer_code_points().size:
        pytest.skip(f"the running regex has newer Unicode data than the tables ({_C.TOK_UNICODE_VERSION}, the "
                    "peers' version; tools/gen_unicode_tables.py names the regex release that makes them): "
                    "test_unicode_tables_match_regex_for_every_code_point compares the classes")
    subprocess.run([sys.executable, gen.__file__, "--out-dir", str(tmp_path)], check=True, capture_output=True)
    committed = os.path.join(os.path.dirname(gen.__file__), "..", "csrc", "tokenizer")
    for name in ("unicode_tables.h", "unicode_tables.cpp"):
        def body(path):
            with open(path, encoding="utf-8") as f:
                return [line for line in f if not line.startswith("// Generated by")]
        assert body(tmp_path / name) == body(os.path.join(committed, name)), name


@pytest.mark.parametrize("name", NAMES)
def test_pydoc_topics(name):
    assert_same(name, list(PYDOC.values()))


@pytest.mark.parametrize("name", NAMES)
def test_shakespeare(name):
    texts = [t for _, t in shakespeare_texts()[:6]]
    assert_same(name, texts, threads=2)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_shakespeare_all(name):
    assert_same(name, [t for _, t in shakespeare_texts()], threads=0)


def stdlib_sources(limit_bytes=1_500_000):
    out, total = [], 0
    for path in sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py"))):
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            out.append(f.read())
        total += len(out[-1])
        if total > limit_bytes:
            break
    return out


@pytest.mark.parametrize("name", NAMES)
def test_python_code(name):
    assert_same(name, stdlib_sources())


@pytest.mark.parametrize("name", NAMES)
def test_random_strings_over_alphabet(name):
    rng = random.Random(1)
    texts = ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 40))) for _ in range(4000)]
    assert_same(name, texts)


@pytest.mark.parametrize("name", NAMES)
def test_random_code_points_all_planes(name):
    rng = random.Random(2)
    texts = []
    for _ in range(500):
        chars = []
        for _ in range(rng.randint(1, 60)):
            r = rng.random()
            if r < 0.3:
                chars.append(chr(rng.randrange(0x110000)))  # any plane, surrogates included
            elif r < 0.5:
                chars.append(chr(rng.randrange(0x10000)))
            else:
                chars.append(rng.choice(ALPHABET))
        texts.append("".join(chars))
    assert_same(name, texts)


CASES = [
    "", " ", "  ", "a", " a", "  a", "   a b  c\t\td\n", "x  \n  \n y", "end  ", "end \n", "\n\n\n", "\r\n\r\n x",
    "don't DON'T Don'T we'll WE'LL I'm I'M they're THEY'RE you've YOU'VE he'd HE'D it's IT'S",
    "'s 'S 'ſ 'll 'LL 'lL 've 'VE 're 'RE 'm 'M 'd 'D 't 'T 'x '' ''s 's's",
    "HELLO world HelloWorld helloWORLD ǅungla ǅUNGLA Σίσυφος ΣΊΣΥΦΟΣ",
    "e\u0301 \u0301 \u0301\u0301a A\u0301B \u0301'S x\u0301's",
    "\U0001F468\u200d\U0001F469\u200d\U0001F467 \U0001F44D\U0001F3FB \u2764\ufe0f flag\U0001F1EF\U0001F1F5",
    "漢字かなカナ 한국어 中文，标点。", "שלום עולם مرحبا بالعالم 123 ١٢٣",
    "٠١٢٣٤٥٦٧٨٩ ०१२३४५ ๐๑๒ 12345678 ½¾ ⅠⅡⅢ x²³",
    "\t \n \r \x0b \x0c \u00a0 \u1680 \u2000 \u2028 \u2029 \u202f \u205f \u3000 \x85 \x1c\x1d\x1e\x1f",
    " \u00a0\u3000a \u3000\u3000b \t\tc \n\n d",
    "a/b//c /\n/ ./\n\r/x http://x.y/z?a=1&b=2",
    "\ud800 \udc00x \ud800abc a\udfffb 12\ud800 '\ud800s",
    "def f(x):\n    return x  # c\n\n\n\tpass\n",
]


@pytest.mark.parametrize("name", NAMES)
def test_cases(name):
    assert_same(name, CASES)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=300, deadline=None)
@given(text=st.text(st.characters(codec=None, exclude_categories=()), max_size=50))
def test_hypothesis_any_chars(name, text):
    assert_same(name, [text])


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=300, deadline=None)
@given(text=st.text(st.sampled_from(ALPHABET), max_size=60))
def test_hypothesis_alphabet(name, text):
    assert_same(name, [text])


ENCODED_SURROGATE = regex.compile(rb"\xed[\xa0-\xbf][\x80-\xbf]")


def bytes_reference(name, data):
    """Pieces of bytes without encoded surrogates: each invalid byte is one 'other' character, as
    surrogateescape's U+DC80..U+DCFF are for the regex."""
    text = data.decode("utf-8", "surrogateescape")
    return [p.encode("utf-8", "surrogateescape") for p in regex_pieces(name, text)]


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=300, deadline=None)
@given(data=st.lists(st.one_of(st.binary(max_size=4), st.sampled_from([b"a", b" ", b"\n", b"'s", b"\xc3\xa9", b"\xe2\x80\xa8", b"\xf0\x9f\x98\x80"])), max_size=20).map(b"".join))
def test_invalid_utf8_bytes(name, data):
    (pieces,) = _C.tok_pretokenize([data], IDS[name], 1)
    assert b"".join(pieces) == data and all(pieces)
    text = data.decode("utf-8", "surrogateescape")
    if not ENCODED_SURROGATE.search(data) and comparable(text) == text:  # (newer Unicode: coverage only)
        assert pieces == bytes_reference(name, data)


@pytest.mark.parametrize("name", NAMES)
def test_invalid_utf8_cases(name):
    cases = [b"\xff", b"\x80abc", b"a\xc3", b"\xe2\x82", b"\xe2\x82 x", b"\xf0\x9f\x98", b"\xc0\xaf", b"\xe0\x80\x80",
             b"\xf4\x90\x80\x80", b"\xf5\x80", b" \xffabc", b"\xff\xfe 12 \xfe\n", b"x'\xffs", b"\xed\xa0\x80abc\xed\xbf\xbf"]
    got = _C.tok_pretokenize(cases, IDS[name], 1)
    for data, pieces in zip(cases, got):
        assert b"".join(pieces) == data
        if not ENCODED_SURROGATE.search(data):
            assert pieces == bytes_reference(name, data)
        else:  # encoded surrogates are one character each, as in a str
            expected = regex_pieces(name, data.decode("utf-8", "surrogatepass"))
            assert pieces == [p.encode("utf-8", "surrogatepass") for p in expected]


@pytest.mark.parametrize("name", NAMES)
def test_long_runs(name):
    texts = ["a" * 100_000, "A" * 50_000 + "!", " " * 100_000 + "x", "\n " * 30_000, "1" * 100_001,
             "\u0301" * 50_000, "é" * 10_000 + "É" * 10_000, "/" * 10_000 + "\n" * 10]
    assert_same(name, texts)


@pytest.mark.parametrize("name", NAMES)
def test_counts_equal_counter(name):
    texts = list(PYDOC.values())[:300] + CASES + [t for _, t in shakespeare_texts()[:1]]
    pieces, counts = _C.tok_count_pieces(texts, IDS[name], 2)
    expected = collections.Counter()
    for t in texts:
        expected.update(p.encode("utf-8", "surrogatepass") for p in regex_pieces(name, t))
    assert counts.dtype == np.uint64 and len(pieces) == len(counts)
    assert pieces == sorted(expected)
    assert dict(zip(pieces, counts.tolist())) == dict(expected)


@pytest.mark.parametrize("name", NAMES)
def test_thread_count_invariance(name):
    texts = list(PYDOC.values()) + CASES
    ref_pieces = native(texts, name, 1)
    ref_counts = _C.tok_count_pieces(texts, IDS[name], 1)
    for threads in (2, 3, 8, 0):
        assert native(texts, name, threads) == ref_pieces
        pieces, counts = _C.tok_count_pieces(texts, IDS[name], threads)
        assert pieces == ref_counts[0] and np.array_equal(counts, ref_counts[1])


def test_empty_and_errors():
    assert _C.tok_pretokenize([], 1, 0) == []
    assert _C.tok_pretokenize(["", b""], 1, 0) == [[], []]
    pieces, counts = _C.tok_count_pieces([], 2, 0)
    assert pieces == [] and counts.dtype == np.uint64 and counts.size == 0
    with pytest.raises(ValueError, match="pattern"):
        _C.tok_pretokenize(["x"], 3, 1)
    with pytest.raises(ValueError, match="pattern"):
        _C.tok_count_pieces(["x"], -1, 1)
    with pytest.raises(ValueError, match="num_threads"):
        _C.tok_pretokenize(["x"], 0, -1)
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        _C.tok_pretokenize(["x", 3], 0, 1)


@pytest.mark.parametrize("name", NAMES)
def test_counts_of_bytes_with_invalid_utf8(name):
    rng = random.Random(3)
    texts = [bytes(rng.randrange(256) for _ in range(rng.randint(0, 40))) for _ in range(500)]
    texts += [t.encode("utf-8", "surrogatepass") for t in CASES]
    pieces, counts = _C.tok_count_pieces(texts, IDS[name], 2)
    expected = collections.Counter(p for ps in _C.tok_pretokenize(texts, IDS[name], 1) for p in ps)
    assert dict(zip(pieces, counts.tolist())) == dict(expected)
    assert sum(len(p) * c for p, c in zip(pieces, counts.tolist())) == sum(map(len, texts))
