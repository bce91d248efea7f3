"""A trained fastlm Tokenizer against its peers on inputs chosen to break parity.

For each built-in pattern, a small tokenizer trained on a few KB of mixed-script text is compared
with (a) its `to_tiktoken()` Encoding, (b) its `save_hf` tokenizer.json loaded by `tokenizers` and
by `transformers`, (c) itself reloaded from every file format. Inputs: random Unicode over the full
range (unassigned code points, lone surrogates, combining marks, ZWJ emoji, RTL), whitespace runs
with \\r, tabs, U+0085 and U+2028, digits of other scripts, long words, special-token text under
tiktoken's allowed/disallowed policy, batch vs single, thread counts, and decoding of every id, of
invalid ids and of byte sequences that are not whole UTF-8 characters.
"""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastlm.tokenizer import DEFAULT_SPECIALS, PATTERNS, Tokenizer, load
from fastlm.tokenizer._backend import fix_surrogates
from fastlm.tokenizer.chat_template import render_conversation
from fastlm.tokenizer.formats import read_ranks_file

tiktoken = pytest.importorskip("tiktoken")
tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

SPECIALS = (*DEFAULT_SPECIALS, "<|a b|>", "<|日本|>", " <|sp|>", "<|\n|>")

# A few KB of varied text: scripts, digits of other scripts, code, whitespace kinds, emoji, RTL.
CORPUS = [
    "Hello world! It's a test; they'll say 'we've' & THEY'RE done. 12345 67 8\r\n",
    "Ünïcödé façade naïve café — «quotes» „deutsch“ ŁÓDŹ İstanbul ß ﬁ ǅ\n",
    "日本語のテキスト、中文文本。한국어 텍스트 ภาษาไทย ᐃᓄᒃᑎᑐᑦ\n\n",
    "עברית בדיקה ‏العربية ٣٤٥ ١٢٣ ۴۵۶ फ़ारसी १२३ ໑໒໓ ๑๒๓ ௧௨௩\u200f\u200e\n",
    "def f(x):\n    return x**2  # comment\r\n\r\n\tif x:\n\t\tpass\n        \n",
    "👨\u200d👩\u200d👧\u200d👦 🏳\ufe0f\u200d🌈 e\u0301 a\u0308\u0323 n\u0303 \u00a0nbsp \u3000ideo\u2028ls\u0085nel\u2029ps\n",
    "   leading spaces\ttab\x0bvt\x0cff    trailing   \n\n\n\r\r\n",
    "the the the quick brown fox jumps over the lazy dog; THE QUICK BROWN FOX\n",
]
CORPUS = [t * 6 for t in CORPUS]


def _reload_all(tok: Tokenizer, d: str) -> dict:
    """``tok`` reloaded from every format the package reads."""
    out = {}
    tok.save(os.path.join(d, "t.fastlm"))
    out["fastlm"] = load(os.path.join(d, "t.fastlm"))
    os.makedirs(os.path.join(d, "dir"))
    tok.save(os.path.join(d, "dir"))
    out["dir"] = Tokenizer.from_file(os.path.join(d, "dir"))
    body = os.path.join(d, "ranks.tiktoken")  # the body of a fastlm file is a .tiktoken file
    with open(os.path.join(d, "t.fastlm"), "rb") as f, open(body, "wb") as g:
        g.writelines(f.readlines()[1:])
    out["tiktoken_file"] = Tokenizer.from_tiktoken_file(body, pattern=tok.pattern, special_tokens=tok.special_tokens)
    tok.save_hf(os.path.join(d, "tokenizer.json"))
    out["hf"] = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    out["from_tiktoken"] = Tokenizer.from_tiktoken(tok.to_tiktoken())
    return out


class Peers:
    def __init__(self, pattern: str, d: str):
        self.tok = Tokenizer.train_from_iterator(CORPUS, 700, pattern=pattern, special_tokens=SPECIALS, min_frequency=1)
        self.enc = self.tok.to_tiktoken()
        self.reloaded = _reload_all(self.tok, d)
        path = os.path.join(d, "tokenizer.json")
        self.hf = tokenizers.Tokenizer.from_file(path)
        self.hf_plain = tokenizers.Tokenizer.from_file(path)
        self.hf_plain.encode_special_tokens = True  # special-token text as ordinary text
        self.fast = transformers.PreTrainedTokenizerFast(tokenizer_file=path)


@pytest.fixture(scope="module", params=list(PATTERNS))
def peers(request, tmp_path_factory):
    return Peers(request.param, str(tmp_path_factory.mktemp(request.param)))


def test_trained_vocab_is_nontrivial(peers):
    tok = peers.tok
    assert tok.n_mergeable > 400 and max(len(t) for t in tok.tokens) >= 6
    for name, back in peers.reloaded.items():
        assert back.tokens == tok.tokens and back.special_tokens == tok.special_tokens, name
        assert back.pat_str == tok.pat_str, name


# ---- text strategies -------------------------------------------------------------------------

PIECES = [
    "<|bos|>", "<|pad|>", "<|user_start|>", "<|a b|>", "<|日本|>", " <|sp|>", "<|\n|>", "<|", "|>", "<|bos", "bos|>",
    "'s", "'S", "'LL", "'ve", "'Re", "'d", "  ", "\r\n", "\n\n\n", "\r", "\t\t", "\x0b", "\x0c", "\x85", "\u2028",
    "\u2029", "\u00a0", "\u3000", "\u200d", "\u200f", "\ufeff", "٣٤٥", "१२३", "໑໒", "1234567", "𝟙𝟚", "Ⅻ", "½",
    "👨\u200d👩\u200d👧", "🏳\ufe0f\u200d🌈", "e\u0301", "\u0301\u0302", "\U000E0100", "ǅ", "ß", "İ", "ﬁ", "the",
    " the", "quick", "日本語", "עברית", "العربية", "\ud83d\ude00", "\ud800", "\udfff", "\x00", "\x7f", "\U0010FFFF",
    "\U00050000", "\u0378", "\uFFFF", "a" * 300, " " * 70, "\n" * 40,
]
ANY_CHAR = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=())  # surrogates too
TEXTS = st.lists(st.one_of(st.sampled_from(PIECES), ANY_CHAR, st.text(ANY_CHAR, max_size=8),
                           st.sampled_from(" \t\r\n\x85\u2028").map(lambda c: c * 5)), max_size=25).map("".join)
FAST = settings(max_examples=120, deadline=None)


@FAST
@given(text=TEXTS)
def test_random_text_same_ids_everywhere(peers, text):
    tok, enc = peers.tok, peers.enc
    ordinary = tok.encode_ordinary(text)
    assert ordinary == enc.encode_ordinary(text)
    assert tok.encode(text, disallowed_special=()) == ordinary == enc.encode(text, disallowed_special=())
    for name, back in peers.reloaded.items():
        assert back.encode_ordinary(text) == ordinary, name
    with_specials = tok.encode(text, allowed_special="all")
    assert with_specials == enc.encode(text, allowed_special="all")
    # HF takes no lone surrogates; fastlm and tiktoken encode them as U+FFFD
    clean = fix_surrogates(text)
    assert peers.hf.encode(clean, add_special_tokens=False).ids == with_specials  # HF always matches added tokens
    assert peers.hf_plain.encode(clean, add_special_tokens=False).ids == ordinary
    assert peers.fast(clean, add_special_tokens=False)["input_ids"] == with_specials
    assert tok.decode(ordinary) == clean == tok.decode(with_specials)
    assert peers.hf.decode(with_specials, skip_special_tokens=False) == clean
    assert peers.fast.decode(with_specials) == clean


@FAST
@given(texts=st.lists(TEXTS, max_size=6), num_threads=st.sampled_from([0, 1, 2, 3, 8]),
       policy=st.sampled_from(["all", "bos", "none"]))
def test_batch_equals_single_and_tiktoken(peers, texts, num_threads, policy):
    tok, enc = peers.tok, peers.enc
    kw = {"all": dict(allowed_special="all"), "bos": dict(allowed_special={"<|bos|>"}, disallowed_special=()),
          "none": dict(disallowed_special=())}[policy]
    single = [tok.encode(t, **kw) for t in texts]
    assert tok.encode_batch(texts, num_threads=num_threads, **kw) == single
    assert [a.tolist() for a in tok.encode_batch(texts, num_threads=num_threads, as_numpy=True, **kw)] == single
    assert tok.encode_batch(iter(texts), num_threads=num_threads, **kw) == single  # any iterable, read once
    assert enc.encode_batch(texts, num_threads=max(num_threads, 1), **kw) == single
    if policy == "none":
        assert tok.encode_ordinary_batch(texts, num_threads=num_threads) == single
    assert tok.decode_batch(single) == enc.decode_batch(single)


HAND_PICKED = [
    "", " ", "\n", "\r", "\t", "\x85", "\u2028", "\r\n" * 300 + " ", " " * 3000 + "x", "\n" * 2000,
    " \t\r\n\x0b\x0c\x85\u2028\u2029\u3000\xa0" * 100, "x" + " " * 10 + "\n" * 3 + "  y", "a  \n  b\r\n\r\n  c  ",
    "a" * 20000, "the" * 5000, "ab" * 8000, "٣" * 500, "1" * 1001, "१२३४५६७८९" * 40, "١٢٣٤٥٦٧٨٩٠" * 30,
    "👨\u200d👩\u200d👧\u200d👦" * 100, "e" + "\u0301" * 1000, "\U000E0100" * 300 + "a", "\U0010FFFF" * 50,
    "\U00050000" * 200, "'s'S'LL'll'Re'VE'd" * 20, "العربية" * 100 + "עברית", "\u200f\u200e" * 50, "a\u0300b\u0301" * 80,
    "Hello <|bos|>world<|pad|><|pad|><|user_start|>", "<|<|bos|>|>", "<|bos|", "|>", "<|a b|> <|日本|> <|sp|> <|\n|>",
]


@pytest.mark.parametrize("i", range(len(HAND_PICKED)))
def test_hand_picked_inputs(peers, i):
    text = HAND_PICKED[i]
    tok, enc = peers.tok, peers.enc
    ordinary = tok.encode_ordinary(text)
    assert ordinary == enc.encode_ordinary(text)
    assert peers.hf_plain.encode(text, add_special_tokens=False).ids == ordinary
    both = tok.encode(text, allowed_special="all")
    assert both == enc.encode(text, allowed_special="all") == peers.hf.encode(text, add_special_tokens=False).ids
    assert tok.decode(both) == text == peers.hf.decode(both, skip_special_tokens=False)


# ---- special-token policy --------------------------------------------------------------------


def _outcome(f):
    try:
        return "ok", f()
    except ValueError as e:
        return "ValueError", str(e).split("\n")[0]  # the first line names the token in both


POLICIES = [
    {}, {"allowed_special": "all"}, {"allowed_special": {"<|bos|>"}}, {"allowed_special": {"<|pad|>"}},
    {"disallowed_special": ()}, {"allowed_special": {"<|bos|>"}, "disallowed_special": ()},
    {"disallowed_special": {"<|pad|>"}}, {"allowed_special": {"<|bos|>"}, "disallowed_special": {"<|bos|>"}},
    {"disallowed_special": {"not a special"}}, {"allowed_special": frozenset(SPECIALS), "disallowed_special": "all"},
]


@FAST
@given(text=TEXTS, policy=st.sampled_from(POLICIES))
def test_special_policy_equals_tiktoken(peers, text, policy):
    """The same ids, or the same ValueError naming the same token, as tiktoken."""
    tok, enc = peers.tok, peers.enc
    ours = _outcome(lambda: tok.encode(text, **policy))
    assert ours == _outcome(lambda: enc.encode(text, **policy))
    batch = _outcome(lambda: tok.encode_batch([text, "x"], **policy))
    assert batch == (_outcome(lambda: [ours[1], [tok.token_to_id("x")]]) if ours[0] == "ok" else ours)


def test_special_policy_errors(peers):
    tok = peers.tok
    with pytest.raises(ValueError, match=r"disallowed special token '<\|bos\|>'(.|\n)*allowed_special"):
        tok.encode("hi <|bos|>")
    with pytest.raises(ValueError, match="lacks"):  # tiktoken ignores unknown allowed names; fastlm refuses them
        tok.encode("hi", allowed_special={"<|nope|>"})


# ---- decoding --------------------------------------------------------------------------------


def test_decode_every_id(peers):
    tok, enc, hf = peers.tok, peers.enc, peers.hf
    ids = list(range(tok.n_mergeable)) + sorted(tok.special_tokens.values())
    for i in ids:
        assert tok.token_bytes(i) == enc.decode_single_token_bytes(i)
        assert tok.decode([i]) == enc.decode([i])
    assert tok.decode_bytes(ids) == enc.decode_bytes(ids)
    assert tok.decode(ids) == enc.decode(ids) == hf.decode(ids, skip_special_tokens=False)
    vocab = hf.get_vocab()
    for s, i in tok.special_tokens.items():
        assert hf.token_to_id(s) == i == vocab[s]
        assert hf.decode([i], skip_special_tokens=False) == s
        assert peers.fast.convert_tokens_to_ids(s) == i


@pytest.mark.parametrize("bad", [[-1], [10**6], [2**40], [2**70], [5, 10**6], [1.0], ["a"], [True]])
def test_decode_invalid_ids(peers, bad):
    """tiktoken raises KeyError/OverflowError/TypeError (or reads True as 1); fastlm a ValueError naming the id."""
    with pytest.raises(ValueError, match="token id|must be integers"):
        peers.tok.decode(bad)
    with pytest.raises(ValueError, match="token id|must be integers"):
        peers.tok.decode_bytes(np.array(bad) if not isinstance(bad[-1], (str, bool)) else bad)


@pytest.mark.parametrize("bad", [[[1, 2], [3, 4]], [[1], [2, 3]], np.array([[104, 105]])])
def test_decode_refuses_a_batch(peers, bad):
    """Old code flattened [[1, 2], [3, 4]] into one sequence: a batch decoded as one text."""
    with pytest.raises(ValueError, match="flat sequence"):
        peers.tok.decode(bad)
    assert peers.tok.decode_batch([[104], [105]]) == ["h", "i"]


@FAST
@given(ids=st.lists(st.one_of(st.integers(0x80, 0xFF), st.integers(0, 0x7F), st.integers(256, 10**4)), max_size=20))
def test_decode_partial_utf8_like_tiktoken_and_hf(peers, ids):
    """Lone continuation bytes, cut multi-byte characters, specials in between."""
    tok, enc = peers.tok, peers.enc
    specials = sorted(tok.special_tokens.values())
    ids = [i if i < tok.n_mergeable else specials[i % len(specials)] for i in ids]
    assert tok.decode_bytes(ids) == enc.decode_bytes(ids)
    for errors in ("replace", "ignore", "surrogateescape", "backslashreplace"):
        assert tok.decode(ids, errors=errors) == enc.decode(ids, errors=errors)
    assert tok.decode(ids) == peers.hf.decode(ids, skip_special_tokens=False)  # Rust's from_utf8_lossy
    try:
        expect = enc.decode(ids, errors="strict")
    except UnicodeDecodeError:
        with pytest.raises(UnicodeDecodeError):
            tok.decode(ids, errors="strict")
    else:
        assert tok.decode(ids, errors="strict") == expect


# ---- HF export of special tokens -------------------------------------------------------------


def test_hf_export_special_ids_past_a_gap(tmp_path):
    """cl100k-like ids: mergeable ranks 0..n-1, then specials at n+1, n+5, n+20. tokenizers gives an
    added token missing from the vocab the next free id, so without the vocab entries every special
    id shifted (old code: <|endoftext|> became n)."""
    base = Tokenizer.train_from_iterator(CORPUS, 400, pattern="gpt4", special_tokens=(), min_frequency=1)
    n = base.n_mergeable
    specials = {"<|endoftext|>": n + 1, "<|fim|>": n + 5, "<|endofprompt|>": n + 20}
    tok = Tokenizer(base.tokens, pattern="gpt4", special_tokens=specials)
    path = str(tmp_path / "tokenizer.json")
    tok.save_hf(path)
    hf = tokenizers.Tokenizer.from_file(path)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=path)
    text = "a<|endoftext|>b <|endofprompt|>c<|fim|> the end"
    ids = tok.encode(text, allowed_special="all")
    assert ids == tok.to_tiktoken().encode(text, allowed_special="all")
    assert hf.encode(text, add_special_tokens=False).ids == ids
    assert fast(text, add_special_tokens=False)["input_ids"] == ids
    assert hf.decode(ids, skip_special_tokens=False) == text
    assert hf.decode(ids, skip_special_tokens=True) == "ab c the end"
    back = Tokenizer.from_hf(path)
    assert back.tokens == tok.tokens and back.special_tokens == specials and back.n_vocab == n + 21


def test_hf_export_refuses_a_special_spelled_like_a_token(tmp_path):
    """A special token "ling" when b"ling" is a mergeable token: tokenizer.json maps a string to one
    id, so tokenizers gave the special the mergeable id (old code: silently different ids, and from_hf
    refused the file fastlm wrote). The same for "Ġthe", the byte-level spelling of b" the"."""
    base = Tokenizer.train_from_iterator(CORPUS, 400, pattern="gpt4", special_tokens=(), min_frequency=1)
    word = max((t for t in base.tokens if t.isalpha()), key=len)  # a merged ASCII word
    assert len(word) > 1
    for special, token in ((word.decode(), word), ("\u0120the", b" the")):
        assert token in base.mergeable_ranks
        tok = Tokenizer(base.tokens, pattern="gpt4", special_tokens={special: base.n_mergeable})
        path = tmp_path / "tokenizer.json"
        with pytest.raises(ValueError, match=f"special token '{special}'.*mergeable token {token!r}"):
            tok.save_hf(str(path))
        assert not path.exists()


def test_hf_reads_gpt2_style_files_with_specials_in_the_vocab(peers, tmp_path):
    """The exported vocab holds the specials too (as GPT-2's file does); old exports without them load the same."""
    import json

    path = tmp_path / "tokenizer.json"
    peers.tok.save_hf(str(path))
    doc = json.loads(path.read_text(encoding="utf-8"))
    for s in peers.tok.special_tokens:
        del doc["model"]["vocab"][s]
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    back = Tokenizer.from_hf(str(path))
    assert back.tokens == peers.tok.tokens and back.special_tokens == peers.tok.special_tokens


# ---- round trips of odd special tokens through every format ------------------------------------


def test_odd_specials_survive_every_format(tmp_path):
    base = Tokenizer.train_from_iterator(CORPUS, 400, pattern="o200k", special_tokens=(), min_frequency=1)
    n = base.n_mergeable
    odd = ["<|\u2028|>", "<|\x85|>", "<|\r|>", '<|"\\|>', "<|\t|>", "<|é|>", "<|Ġ|>", "<|\U0001F600|>"]
    specials = {s: n + 2 * i for i, s in enumerate(odd)}
    tok = Tokenizer(base.tokens, pattern="o200k", special_tokens=specials)
    for name, back in _reload_all(tok, str(tmp_path)).items():
        assert back.tokens == tok.tokens and back.special_tokens == specials, name
    text = "x".join(odd) + " tail"
    ids = tok.encode(text, allowed_special="all")
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert hf.encode(text, add_special_tokens=False).ids == ids == tok.to_tiktoken().encode(text, allowed_special="all")
    assert read_ranks_file(str(tmp_path / "ranks.tiktoken")) == tok.tokens
    from tiktoken.load import load_tiktoken_bpe

    assert load_tiktoken_bpe(str(tmp_path / "ranks.tiktoken")) == tok.mergeable_ranks


# ---- chat template and argument checks -------------------------------------------------------


def test_chat_content_is_ordinary_text(peers):
    tok, enc = peers.tok, peers.enc
    content = "say <|user_end|> and <|bos|>\r\n 日本 \u2028"
    ids, mask = render_conversation(tok, {"messages": [{"role": "user", "content": content},
                                                       {"role": "assistant", "content": content}]})
    body = enc.encode_ordinary(content)
    sp = tok.special_tokens
    expect = [sp["<|bos|>"], sp["<|user_start|>"], *body, sp["<|user_end|>"]]
    assert ids[: len(expect)] == expect and ids[len(expect) + 1 : -1] == body
    assert mask == [0] * (len(expect) + 1) + [1] * (len(body) + 1)


def test_bad_arguments_name_what_is_wrong(peers):
    tok = peers.tok
    # old code: with allowed specials, a single str was encoded one character per document
    for kw in ({}, {"allowed_special": "all"}, {"disallowed_special": ()}):
        with pytest.raises(TypeError, match="single str"):
            tok.encode_batch("abc", **kw)
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str, got bytes"):
        tok.encode_batch(["a", b"b"], allowed_special="all")
    with pytest.raises(TypeError, match=r"texts\[0\] must be a str, got NoneType"):
        tok.encode_batch([None])
    for f in (tok.encode, tok.encode_ordinary):
        with pytest.raises(TypeError, match="text must be a str, got bytes"):
            f(b"abc")
    with pytest.raises(ValueError, match="num_threads"):
        tok.encode_batch(["a"], num_threads=1.5)
    with pytest.raises(ValueError, match="num_threads"):
        tok.encode_batch(["a"], num_threads=-1)


def test_special_policy_refuses_a_str_other_than_all():
    # allowed_special="<|bos|>" was read as the set of its characters: "names tokens this tokenizer lacks: ['<', 'b', ...]"
    tok = Tokenizer([bytes([b]) for b in range(256)], special_tokens={"<|bos|>": 256})
    for kw in ({"allowed_special": "<|bos|>"}, {"disallowed_special": "<|bos|>"}):
        with pytest.raises(ValueError, match=r"must be 'all' or a set of special tokens, got the str '<\|bos\|>'"):
            tok.encode("<|bos|>x", **kw)
    assert tok.encode("<|bos|>x", allowed_special={"<|bos|>"}) == [256, 120]
