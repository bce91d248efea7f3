"""Text-stage parity on generated inputs: Normalizer vs ftfy, native quality statistics vs Python.

The normalizer's claim (README, data-stage benchmarks): its output is identical to calling ftfy
on every document with the same steps. The quality filters' claim: the native statistics equal
their Python definitions. Both are checked here on inputs the older tests do not reach: the
whole code point range (unassigned, private use, controls, lone surrogates), generated mojibake
(one or two wrong decodings), entities, ligatures, widths, line-break styles, very long lines;
and for the statistics odd whitespace, punctuation-only and word-less text, huge repetition,
and case mappings that depend on context (word-final capital sigma).
"""
import unicodedata

import ftfy
import ftfy.bad_codecs  # noqa: F401 - registers the sloppy-windows-* codecs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reference_classifier as ref_lex
from fastlm import _C
from fastlm.data.lexicon import LexiconFilter
from fastlm.data.normalize import FTFY_DEFAULTS, NormalizeConfig, Normalizer, ftfy_trigger_set
from fastlm.data.quality import (_STRIP_CODEPOINTS, FineWebQualityFilter, GopherQualityFilter,
                                 GopherRepetitionFilter)
from reference_text import (clean_reference, fineweb_stats, gopher_quality_stats,
                            gopher_repetition_stats, scan_reference)



def fuzz(examples):
    """Hypothesis settings for these tests: no deadline (ftfy's first calls are slow)."""
    return settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))

# ------------------------------------------------------------------- generated text

ANY_CHAR = st.integers(0, 0x10FFFF).map(chr)  # includes lone surrogates, C0/C1, noncharacters
SPECIAL = st.sampled_from([
    "\ufeff", "\ufffd", "\u0300", "\u0301", "\u0308", "\u200b", "\u200d", "\x00", "\x1b", "\x85",
    "\x80", "\x9f", "\xa0", "\xad", "\r", "\n", "\r\n", "\t", " ", "\u2028", "\u2029", "\ufb01",
    "\ufb02", "\uff21", "\uff41", "\u3000", "\u2018", "\u2019", "\u201c", "\u201d", "\u02bc",
    "&amp;", "&lt;", "&#8217;", "&nbsp;", "<b>", "Ã", "Â", "â€™", "Ã©", "Ã\xa0", "Ð¿", "\ud800",
    "\udfff", "\ud83d\ude00", "\ue000", "\U000f0000", "\U0010ffff", "\uffff", "\u0378",
    "\x1b[31m", "\x1b[0m", "e\u0301", "\u0301\u0301"])
# Encodings that mojibake comes from (ftfy repairs most of them; parity must hold for all).
CODECS = ["latin-1", "cp1252", "sloppy-windows-1252", "sloppy-windows-1251", "cp437",
          "mac_roman", "cp850"]


@st.composite
def mojibake(draw):
    """Text encoded as UTF-8 and decoded with a single-byte codec, once or twice."""
    text = draw(st.lists(st.one_of(st.characters(codec="utf-8"), SPECIAL), max_size=20)
                .map("".join))
    for _ in range(draw(st.integers(1, 2))):
        text = text.encode("utf-8", "surrogatepass").decode(draw(st.sampled_from(CODECS)),
                                                            "replace")
    return text


SEGMENT = st.one_of(st.lists(st.one_of(ANY_CHAR, SPECIAL), max_size=20).map("".join), mojibake(),
                    st.text(st.sampled_from("abc déf"), max_size=15))
BREAK = st.sampled_from(["", " ", "\n", "\r\n", "\r", "\n\n\n\n", "\t", "\u2028"])
# Documents mixing clean and broken segments with every line-break style.
DOC = st.lists(st.tuples(SEGMENT, BREAK), max_size=6).map(lambda p: "".join(a + b for a, b in p))

FTFY_CONFIG = ftfy.TextFixerConfig(**FTFY_DEFAULTS, explain=False)


def normalize_reference(text):
    """Default steps, one library at a time: ftfy on the whole text, NFC, the clean reference."""
    text = ftfy.fix_text(text, FTFY_CONFIG)
    return clean_reference(unicodedata.normalize("NFC", text))


# ------------------------------------------------------------------- normalization vs ftfy

DEFAULT = Normalizer(NormalizeConfig(num_threads=2))


@fuzz(150)
@given(st.lists(DOC, min_size=1, max_size=5))
def test_normalizer_equals_ftfy_steps_generated(docs):
    got = DEFAULT.normalize_batch(docs)
    for d, g in zip(docs, got):
        assert g == normalize_reference(d), repr(d)


HANDMADE = [
    "", "\ufeff", "\n", "\r\n\r\n", "\ufffd", "\u0301", "\u0301abc", "\ud800", "\udc00\ud800",
    "\ud83d\ude00", "&amp; &lt;b&gt; &#8217;", "ﬁ ﬂ ﬀ ﬃ ﬄ ﬅ ﬆ", "ＡＢＣ　ｄｅｆ", "“a” ‘b’ ʼ",
    "a\r\nb\rc\u2028d\u2029e\x85f", "\x1b[31mred\x1b[0m", "\x80\x9f", "Ã\xa0 votre", "voilÃ  le",
    "â€œquotedâ€\x9d", "ÐŸÑ€Ð¸Ð²ÐµÑ‚ Ð¼Ð¸Ñ€", "cafÃ©\r\ncafé\r\n",
    "café — ok".encode().decode("latin-1").encode().decode("latin-1"),  # mojibake twice
    "\U000f0000\U0010ffff\uffff\u0378", "e\u0301\n\u0301", " \t lead\t \t mid  \n\n\n\n\n end \t",
    "clean line\nCafÃ© line\nclean again\n" * 3,
]


def test_normalizer_equals_ftfy_steps_handmade():
    assert DEFAULT.normalize_batch(HANDMADE) == [normalize_reference(d) for d in HANDMADE]


def test_normalizer_long_lines():
    # Lines longer than max_decode_length are cut into chunks by ftfy itself; mojibake straddles
    # the cut at 1,000,000 characters here (the default) and at 50 in the second config.
    broken = "café naïve — “quoted”".encode().decode("sloppy-windows-1252")
    docs = ["x" * 999_990 + broken + "\nCafÃ©", "x" * 999_999 + "Ã©"]
    assert DEFAULT.normalize_batch(docs) == [normalize_reference(d) for d in docs]
    short = dict(ftfy_options={"max_decode_length": 50}, num_threads=1)
    docs = [("y" * 47 + broken) * 5, ("z" * 30 + "Ã© ") * 10 + "\nok Ã©\n"]
    assert (Normalizer(NormalizeConfig(**short)).normalize_batch(docs)
            == Normalizer(NormalizeConfig(**short, ftfy_prescan=False)).normalize_batch(docs))


CONFIGS = [
    dict(ftfy_options=dict(uncurl_quotes=True, fix_line_breaks=True, remove_control_chars=True)),
    dict(ftfy_options=dict(normalization="NFC", fix_character_width=True), unicode_form="NFKC"),
    dict(ftfy_options=dict(unescape_html="auto")),
    dict(ftfy_options=dict(unescape_html=True)),
    dict(ftfy_options=dict(max_decode_length=7)),
    dict(ftfy_options=dict(normalization="NFD")),
    dict(ftfy_options=dict(fix_encoding=False, fix_latin_ligatures=False)),
    dict(unicode_form=None, keep_indentation=False, max_blank_lines=0, remove_control=False),
    dict(unicode_form="NFD", whitespace=False),
    dict(html=True),
]
PAIRS = [(Normalizer(NormalizeConfig(**c, num_threads=1)),
          Normalizer(NormalizeConfig(**c, ftfy_prescan=False, num_threads=1))) for c in CONFIGS]


@fuzz(120)
@given(st.lists(DOC, min_size=1, max_size=4), st.integers(0, len(CONFIGS) - 1))
def test_prescan_equals_plain_ftfy_other_configs(docs, k):
    fast, plain = PAIRS[k]
    assert fast.normalize_batch(docs) == plain.normalize_batch(docs), (CONFIGS[k], docs)


BAD, FIX = ftfy_trigger_set()
TRIGGERS = set(BAD) | set(FIX)
_bits = bytearray(0x110000 // 8)
for _cp in TRIGGERS:
    _bits[_cp >> 3] |= 1 << (_cp & 7)
TRIGGER_BITMAP = bytes(_bits)


@fuzz(200)
@given(st.lists(st.lists(st.one_of(ANY_CHAR, st.sampled_from(sorted(map(chr, TRIGGERS)))),
                         max_size=12).map("".join), min_size=1, max_size=8))
def test_trigger_scan_matches_reference_any_code_point(texts):
    assert _C.text_scan_triggers(texts, TRIGGER_BITMAP, 2) == [
        scan_reference(t, TRIGGERS) for t in texts]


# ------------------------------------------------------------------- quality statistics

WHITESPACE = [chr(c) for c in range(0x110000) if chr(c).isspace()]
WORDS = ["the", "THE", "The", "of", "für", "FÜR", "ΟΣ", "ος", "οσ", "ΣΟΣ", "Σ", "ΑΣ\u0301",
         "ΑΣ\u00ad", "ΑΣ'", "ΑΣ.", "ΑΣΑ", "İ", "I\u0307", "Ǆ", "ǅ", "ǈ", "ﬁ", "FI", "ß", "ẞ",
         "ΐ", "ⅰ", "Ⅰ", "²", "x", "123", "a\u0300", "\u0301", "•", "- ", "* "]
PIECE = st.one_of(ANY_CHAR, st.sampled_from(WHITESPACE + ["\r\n", "\u200b", "\ufeff", "\x00"]),
                  st.sampled_from(list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~“”‘’«»…–—•¡¿")
                                  + ["...", "…"]),
                  st.sampled_from(WORDS), st.sampled_from(list("ab\n")))
TEXT = st.one_of(
    st.lists(PIECE, max_size=40).map("".join),
    st.lists(st.sampled_from(WORDS), max_size=12).map(" ".join),  # words between spaces
    # huge repetition: a short unit (maybe no words at all) repeated up to 60 times
    st.tuples(st.lists(PIECE, max_size=6).map("".join), st.integers(1, 60),
              st.sampled_from(["", " ", "\n", "\n\n", ". "])).map(lambda t: (t[0] + t[2]) * t[1]))

# Stop words with a sigma, a dotted capital I, a titlecase digraph and a ligature: the lowercase
# mappings that are not one code point to one code point, or that depend on the context.
SIGMA_QUALITY = GopherQualityFilter(stop_words=("the", "of", "für", "ΟΣ", "σοσ", "i\u0307", "ǆ", "ﬁ"),
                                    bullets=("•", "- ", "* ", "ⅰ", "\u3000x"), num_threads=2)
REPETITION = GopherRepetitionFilter(top_ngrams=((1, .1), (2, .2), (3, .1)),
                                    dup_ngrams=((1, .1), (2, .1), (5, .1)), num_threads=2)


@fuzz(300)
@given(st.lists(TEXT, min_size=1, max_size=8))
def test_native_quality_and_repetition_stats_equal_python(docs):
    assert SIGMA_QUALITY.stats_batch(docs) == [SIGMA_QUALITY.stats_python(d) for d in docs]
    rows = _C.text_repetition_stats(docs, strip=_STRIP_CODEPOINTS, top_ns=[1, 2, 3],
                                    dup_ns=[1, 2, 5], num_threads=2)
    assert [r.tolist() for r in rows] == [REPETITION.stats_python(d) for d in docs]


@pytest.mark.parametrize("text, stop_words", [
    ("ΟΣ", 1),  # "ΟΣ".lower() == "ος": the final form
    ("ΣΟΣ ΟΣ.", 2),  # "σος", and "ος" once the period is stripped
    ("ΟΣΟΣ ΑΣ\u0301", 0),  # a sigma inside a word is "σ"; one before a combining mark stays final
    ("the ος ΟΣ Ος", 4),
])
def test_stop_words_with_final_sigma(text, stop_words):
    # Python lowers a word-final capital sigma to "ς" (str.lower's one context rule). The native
    # pass lowers code point by code point; check_batch must still count what str.lower counts.
    f = GopherQualityFilter(min_words=1, min_mean_word_length=None, min_alpha_words=None,
                            stop_words=("the", "ος", "σος"), min_stop_words=stop_words)
    assert f.stats_batch([text])[0] == f.stats_python(text)
    assert f.stats_batch([text])[0][8] == stop_words
    assert f.check(text) is None
    assert GopherQualityFilter(**{**vars(f.config), "min_stop_words": stop_words + 1}).check(
        text) == "gopher_quality:stop_words"


def test_stats_huge_repetition_and_wordless_text():
    docs = ["the cat " * 100_000, "a\n" * 50_000, "\n\n".join(["x y z"] * 20_000), "." * 100_000,
            "… " * 50_000, "#" * 50_000, " " * 50_000, "\u3000" * 1000 + "word",
            "a b c d e f g h i j k " * 10_000 + "ΣΟΣ ΟΣ", "", "\x85\x1c\u2028"]
    assert SIGMA_QUALITY.stats_batch(docs) == [SIGMA_QUALITY.stats_python(d) for d in docs]
    rows = _C.text_repetition_stats(docs, strip=_STRIP_CODEPOINTS, top_ns=[2, 3, 4],
                                    dup_ns=[5, 6, 7, 8, 9, 10], num_threads=2)
    full = GopherRepetitionFilter()
    assert [r.tolist() for r in rows] == [full.stats_python(d) for d in docs]


# ------------------------------------------------------------------- decisions vs reference_text

def ref_gopher_quality(text, cfg):
    s = gopher_quality_stats(text, tuple(w.lower() for w in cfg.stop_words), tuple(cfg.bullets))
    rules = [("min_words", "words", "min"), ("max_words", "words", "max"),
             ("min_mean_word_length", "mean_word_length", "min"),
             ("max_mean_word_length", "mean_word_length", "max"),
             ("max_hash_ratio", "hash_ratio", "max"), ("max_ellipsis_ratio", "ellipsis_ratio", "max"),
             ("max_bullet_lines", "bullet_lines", "max"),
             ("max_ellipsis_lines", "ellipsis_lines", "max"),
             ("min_alpha_words", "alpha_words", "min"), ("min_stop_words", "stop_words", "min")]
    for field, stat, kind in rules:
        if field == "min_mean_word_length" and s["words"] == 0:
            return None
        t = getattr(cfg, field)
        if t is not None and (s[stat] < t if kind == "min" else s[stat] > t):
            rule = field[4:] if field in ("max_hash_ratio", "max_ellipsis_ratio", "max_bullet_lines",
                                          "max_ellipsis_lines", "min_alpha_words",
                                          "min_stop_words") else field
            return "gopher_quality:" + rule
    return None


def ref_gopher_repetition(text, cfg):
    if not text:
        return None
    s = gopher_repetition_stats(text, [n for n, _ in cfg.top_ngrams],
                                [n for n, _ in cfg.dup_ngrams])
    for rule in ("dup_para_frac", "dup_para_char_frac", "dup_line_frac", "dup_line_char_frac"):
        t = getattr(cfg, "max_" + rule)
        if t is not None and s[rule] > t:
            return "gopher_repetition:" + rule
    for kind, grams in (("top", cfg.top_ngrams), ("dup", cfg.dup_ngrams)):
        for n, t in grams:
            if s[f"{kind}_{n}_gram"] > t:
                return f"gopher_repetition:{kind}_{n}_gram"
    return None


def ref_fineweb(text, cfg):
    s = fineweb_stats(text, tuple(cfg.stop_chars), cfg.short_line_length)
    r = s["line_punct_ratio"]
    if cfg.line_punct_thr is not None and r <= cfg.line_punct_thr and not (
            r == 0 and cfg.line_punct_exclude_zero):
        return "fineweb_quality:line_punct_ratio"
    if cfg.short_line_thr is not None and s["short_line_ratio"] >= cfg.short_line_thr:
        return "fineweb_quality:short_line_ratio"
    if cfg.char_duplicates_ratio is not None and s["char_dup_ratio"] >= cfg.char_duplicates_ratio:
        return "fineweb_quality:char_dup_ratio"
    if cfg.new_line_ratio is not None and s["list_ratio"] > cfg.new_line_ratio:
        return "fineweb_quality:list_ratio"
    return None


QUALITY = [GopherQualityFilter(num_threads=2),
           GopherQualityFilter(min_words=1, min_mean_word_length=None, min_alpha_words=None,
                               stop_words=("ος", "the"), min_stop_words=1)]
FINEWEB = [FineWebQualityFilter(),
           FineWebQualityFilter(line_punct_thr=0.5, short_line_length=3, line_punct_exclude_zero=True)]


@fuzz(200)
@given(st.lists(TEXT, min_size=1, max_size=8))
def test_filter_decisions_equal_reference(docs):
    for f in QUALITY:
        assert f.check_batch(docs) == [ref_gopher_quality(d, f.config) for d in docs]
    rep = GopherRepetitionFilter(num_threads=2)
    assert rep.check_batch(docs) == [ref_gopher_repetition(d, rep.config) for d in docs]
    for f in FINEWEB:
        assert f.check_batch(docs) == [ref_fineweb(d, f.config) for d in docs]


# ------------------------------------------------------------------- lexicon counts


def _nfc(s):
    return unicodedata.normalize("NFC", s)


LEX_CHAR = st.integers(0, 0x10FFFF).filter(lambda c: not 0xD800 <= c <= 0xDFFF).map(chr)
LEX_PIECE = st.sampled_from(["bad", "BAD", "Bad", "word", "naïve", "nai\u0308ve", "NAÏVE", "ΟΣ",
                             "ος", "東京", "_", "-", " ", "\n", "\u3000", "\ufeff", "é", "e\u0301",
                             "Ǆ", "İ", "ß", "ǅ", "\u200d", "Ά", "ά"])


@fuzz(150)
@given(st.lists(st.lists(LEX_PIECE, min_size=1, max_size=3).map("".join)
                .filter(lambda e: ref_lex.tokenize(_nfc(e))), min_size=1, max_size=4),
       st.lists(st.lists(st.one_of(LEX_CHAR, LEX_PIECE), max_size=30).map("".join),
                min_size=1, max_size=5))
def test_lexicon_counts_equal_reference(entries, texts):
    hits, words = LexiconFilter.from_words(entries, num_threads=1).count(texts)
    lexicon = [_nfc(e) for e in entries]
    assert list(zip(hits, words)) == [ref_lex.lexicon_count(lexicon, _nfc(t)) for t in texts]


def test_lexicon_case_folding_is_the_documented_table():
    # lexicon.py: lowercasing covers ASCII, Latin-1, Latin Extended-A, basic Greek and Cyrillic;
    # other capitals match only as written, and "Σ" lowers to "σ" (never the final "ς").
    assert LexiconFilter.from_words(["ѐ", "ա"]).count(["Ѐ Ա"]) == ([1], [2])
    assert LexiconFilter.from_words(["ά", "ǆ", "ß", "ος"]).count(["Ά Ǆ ẞ ΟΣ"]) == ([0], [4])
    with pytest.raises(ValueError, match="texts\\[0\\].*surrogate"):
        LexiconFilter.from_words(["bad"]).count(["bad \ud800"])
