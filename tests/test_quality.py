"""Quality filters: decisions vs plain-Python reference statistics, thresholds at their edges."""
import dataclasses
import random

import pydoc_data.topics
import pytest

from fastlm import _C

from fastlm.data.quality import (C4QualityFilter, FineWebQualityFilter, GopherQualityConfig,
                                 GopherQualityFilter, GopherRepetitionFilter, _STRIP_CODEPOINTS,
                                 words_of)
from reference_text import (fineweb_stats, gopher_quality_stats, gopher_repetition_stats,
                            ref_words)
import corpora


def _shakespeare_paragraphs(limit):
    return corpora.shakespeare_paragraphs(limit, strip=True)


PYDOC = list(pydoc_data.topics.topics.values())
SHAKESPEARE = _shakespeare_paragraphs(3000)
REAL = PYDOC + SHAKESPEARE

# rule -> (config field, statistic, "max" rejects above / "min" rejects below)
GQ_RULES = {
    "min_words": ("min_words", "words", "min"),
    "max_words": ("max_words", "words", "max"),
    "min_mean_word_length": ("min_mean_word_length", "mean_word_length", "min"),
    "max_mean_word_length": ("max_mean_word_length", "mean_word_length", "max"),
    "hash_ratio": ("max_hash_ratio", "hash_ratio", "max"),
    "ellipsis_ratio": ("max_ellipsis_ratio", "ellipsis_ratio", "max"),
    "bullet_lines": ("max_bullet_lines", "bullet_lines", "max"),
    "ellipsis_lines": ("max_ellipsis_lines", "ellipsis_lines", "max"),
    "alpha_words": ("min_alpha_words", "alpha_words", "min"),
    "stop_words": ("min_stop_words", "stop_words", "min"),
}
REP_RULES = {
    "dup_para_frac": "max_dup_para_frac", "dup_para_char_frac": "max_dup_para_char_frac",
    "dup_line_frac": "max_dup_line_frac", "dup_line_char_frac": "max_dup_line_char_frac",
}
FW_RULES = {  # rule -> (config field, statistic, comparison that rejects)
    "line_punct_ratio": ("line_punct_thr", lambda x, t: x <= t),
    "short_line_ratio": ("short_line_thr", lambda x, t: x >= t),
    "char_dup_ratio": ("char_duplicates_ratio", lambda x, t: x >= t),
    "list_ratio": ("new_line_ratio", lambda x, t: x > t),
}


def ref_gopher_quality(text, cfg):
    s = gopher_quality_stats(text, tuple(cfg.stop_words), tuple(cfg.bullets))
    for rule, (field, stat, kind) in GQ_RULES.items():
        t = getattr(cfg, field)
        if rule == "min_mean_word_length" and s["words"] == 0:
            return None
        if t is not None and (s[stat] < t if kind == "min" else s[stat] > t):
            return "gopher_quality:" + rule
    return None


def ref_gopher_repetition(text, cfg):
    if not text:
        return None
    s = gopher_repetition_stats(text, [n for n, _ in cfg.top_ngrams], [n for n, _ in cfg.dup_ngrams])
    for rule, field in REP_RULES.items():
        t = getattr(cfg, field)
        if t is not None and s[rule] > t:
            return "gopher_repetition:" + rule
    for n, t in cfg.top_ngrams:
        if s[f"top_{n}_gram"] > t:
            return f"gopher_repetition:top_{n}_gram"
    for n, t in cfg.dup_ngrams:
        if s[f"dup_{n}_gram"] > t:
            return f"gopher_repetition:dup_{n}_gram"
    return None


def ref_fineweb(text, cfg):
    s = fineweb_stats(text, tuple(cfg.stop_chars), cfg.short_line_length)
    for rule, (field, rejects) in FW_RULES.items():
        t = getattr(cfg, field)
        if t is not None and rejects(s[rule], t):
            return "fineweb_quality:" + rule
    return None


def _synthetic(rng, n):
    vocab = ["the", "of", "and", "to", "cat", "x", "#", "...", "…", "•", "-", "123", "a1",
             "extraordinarily", "word", "word", "word", "\n", "\n", "\n\n", "“quoted”", "end."]
    return [" ".join(rng.choice(vocab) for _ in range(rng.randrange(120))) for _ in range(n)]


SAMPLE = REAL[:79] + SHAKESPEARE[:600] + _synthetic(random.Random(7), 300) + ["", " ", "\n\n"]


def test_words_of_matches_reference():
    for t in REAL[:500] + _synthetic(random.Random(1), 100):
        assert words_of(t) == ref_words(t)


@pytest.mark.parametrize("overrides", [{}, dict(min_words=5, max_words=200, max_hash_ratio=0.02),
                                       dict(min_words=1, max_bullet_lines=0.2, min_stop_words=0)])
def test_gopher_quality_matches_reference(overrides):
    f = GopherQualityFilter(**overrides)
    assert f.check_batch(SAMPLE) == [ref_gopher_quality(t, f.config) for t in SAMPLE]


@pytest.mark.parametrize("overrides", [{}, dict(max_dup_line_frac=0.1, top_ngrams=((2, 0.05),)),
                                       dict(dup_ngrams=((5, 0.01), (7, 0.02)), top_ngrams=())])
def test_gopher_repetition_matches_reference(overrides):
    f = GopherRepetitionFilter(**overrides)
    assert f.check_batch(SAMPLE) == [ref_gopher_repetition(t, f.config) for t in SAMPLE]


@pytest.mark.parametrize("overrides", [{}, dict(line_punct_thr=0.5, short_line_length=10)])
def test_fineweb_matches_reference(overrides):
    f = FineWebQualityFilter(**overrides)
    assert f.check_batch(SAMPLE) == [ref_fineweb(t, f.config) for t in SAMPLE]


def _only(filter_cls, keep_field, value):
    """A filter with one rule at `value` and every other threshold disabled."""
    cfg = filter_cls.config_class()
    off = {f.name: None for f in dataclasses.fields(cfg) if f.name.startswith(("min_", "max_"))}
    if filter_cls is GopherRepetitionFilter:
        off.update(top_ngrams=(), dup_ngrams=())
    off[keep_field] = value
    return filter_cls(**off)


@pytest.mark.parametrize("rule", list(GQ_RULES))
def test_gopher_quality_rule_edges(rule):
    field, stat, kind = GQ_RULES[rule]
    docs = [d for d in SAMPLE if words_of(d)][:200]
    for d in docs:
        x = gopher_quality_stats(d)[stat]
        assert _only(GopherQualityFilter, field, x).check(d) is None  # exactly at the threshold
        nudged = x + 1e-9 if kind == "min" else x - 1e-9
        if kind == "min" and field in ("min_words", "min_stop_words"):
            nudged = x + 1
        if nudged < 0:
            continue
        assert _only(GopherQualityFilter, field, nudged).check(d) == "gopher_quality:" + rule


@pytest.mark.parametrize("rule", list(REP_RULES) + ["top_3_gram", "dup_6_gram"])
def test_gopher_repetition_rule_edges(rule):
    docs = [d for d in SAMPLE if d.strip()][:150]
    for d in docs:
        x = gopher_repetition_stats(d)[rule]
        if rule in REP_RULES:
            inside = _only(GopherRepetitionFilter, REP_RULES[rule], x)
            outside = _only(GopherRepetitionFilter, REP_RULES[rule], x - 1e-9)
        else:
            n = int(rule.split("_")[1])
            key = "top_ngrams" if rule.startswith("top") else "dup_ngrams"
            inside = _only(GopherRepetitionFilter, key, ((n, x),))
            outside = _only(GopherRepetitionFilter, key, ((n, x - 1e-9),))
        assert inside.check(d) is None
        if x > 0:
            assert outside.check(d) == "gopher_repetition:" + rule


def test_gopher_quality_handmade_defaults():
    f = GopherQualityFilter()
    base = "the cat and dog " * 12 + "sat two"  # 50 words, 2+ stop words, mean 3.0
    assert len(words_of(base)) == 50 and f.check(base) is None
    assert f.check(base.rsplit(" ", 1)[0]) == "gopher_quality:min_words"  # 49 words
    assert f.check(base.replace("sat", "at")) == "gopher_quality:min_mean_word_length"  # 2.98
    long10 = "the and " + "abcdefghij " * 47 + "x" * 24  # mean exactly 10.0
    assert f.check(long10) is None
    assert f.check(long10 + "x") == "gopher_quality:max_mean_word_length"
    assert f.check(base + " #" * 5) is None and f.check(base + " #" * 6) == "gopher_quality:hash_ratio"
    assert f.check(base.replace(" cat", " cat...", 6)) == "gopher_quality:ellipsis_ratio"
    lines = ["the cat and dog sat"] * 10
    bullets = ["• " + l for l in lines]
    assert f.check("\n".join(bullets[:9] + lines[9:])) is None
    assert f.check("\n".join(bullets)) == "gopher_quality:bullet_lines"
    ell = [l + " ..." for l in lines]
    assert f.check("\n".join(ell[:3] + lines[3:])) is None
    assert f.check("\n".join(ell[:4] + lines[4:])) == "gopher_quality:ellipsis_lines"
    words = base.split()
    assert f.check(" ".join(["123"] * 10 + words[10:])) is None  # 80% alphabetic
    assert f.check(" ".join(["123"] * 11 + words[11:])) == "gopher_quality:alpha_words"
    no_stop = "cat dog bird fish " * 13
    assert f.check("The " + no_stop + "with") is None
    assert f.check(no_stop + "with") == "gopher_quality:stop_words"
    assert f.check("the " * 100_001) == "gopher_quality:max_words"


def test_gopher_repetition_handmade_defaults():
    f = GopherRepetitionFilter(top_ngrams=(), dup_ngrams=())
    paras = [f"paragraph number {i} has its own words" for i in range(10)]
    assert f.check("\n\n".join(paras[:6] + ["x"] * 4)) is None  # 3 repeats of 10: 0.3
    assert f.check("\n\n".join(paras[:5] + ["x"] * 5)) == "gopher_repetition:dup_para_frac"
    assert GopherRepetitionFilter().check(" ".join(["spam"] * 100)) == "gopher_repetition:top_2_gram"
    lines = [f"line {i} is different" for i in range(10)]
    assert f.check("\n".join(lines[:6] + ["same"] * 4)) is None  # 3 repeated lines of 10
    assert f.check("\n".join(lines[:5] + ["same"] * 5)) == "gopher_repetition:dup_line_frac"


def test_c4_rules():
    f = C4QualityFilter()
    good = "\n".join(f"This is sentence number {i} of a clean page." for i in range(5))
    assert f.check(good) is None
    assert f.check("\n".join(good.split("\n")[:4])) == "c4_quality:too_few_sentences"
    assert f.check(good + "\nLorem ipsum dolor sit amet.") == "c4_quality:lorem_ipsum"
    assert f.check(good + "\nThe code is { x } here.") == "c4_quality:curly_bracket"
    # Lines that are dropped do not count: no punctuation, too short, javascript, policy.
    dropped = ["Menu item without end", "Too short.", "Please enable JavaScript to view this.",
               "We use cookies, see our privacy policy.", "A line that trails off..."]
    assert f.check("\n".join(dropped + good.split("\n")[:4])) == "c4_quality:too_few_sentences"
    kept, rule = f.kept_lines(good + "\n" + "\n".join(dropped) + "\nSee the notes [12].")
    assert rule is None and kept[-1] == "See the notes ." and len(kept) == 6
    assert C4QualityFilter(min_sentences=4).check("\n".join(good.split("\n")[:4])) is None


def test_fineweb_handmade_defaults():
    f = FineWebQualityFilter()
    line = "this line is long enough not to be short at all"
    unended = [f"{line} {i}" for i in range(8)]
    assert f.check("\n".join([line + "."] + unended[:7])) is None  # 1/8 = 0.125 > 0.12
    assert f.check("\n".join([line + "."] + unended)) == "fineweb_quality:line_punct_ratio"
    long_lines = [f"{line} number {i}." for i in range(3)]
    short = [f"s{i}" for i in range(7)]
    assert f.check("\n".join(long_lines + short[:6])) is None  # 6/9 = 0.667 < 0.67
    assert f.check("\n".join(long_lines + short)) == "fineweb_quality:short_line_ratio"
    assert f.check("\n".join(long_lines + long_lines[:1])) == "fineweb_quality:char_dup_ratio"
    listy = [f"Supercalifragilistic extraordinarily long{i}." for i in range(11)]
    assert f.check("\n".join(listy[:10])) is None  # 9 newlines / 30 words = 0.3
    assert f.check("\n".join(listy)) == "fineweb_quality:list_ratio"  # 10 / 33
    assert FineWebQualityFilter(line_punct_exclude_zero=True, short_line_thr=None).check(
        "a b c\nd e f") is None


def test_real_text_mostly_passes_and_boilerplate_fails():
    docs = [d for d in REAL if len(words_of(d)) >= 50]
    q, r = GopherQualityFilter(), GopherRepetitionFilter()
    passed = sum(q.check(d) is None and r.check(d) is None for d in docs)
    assert passed / len(docs) > 0.95
    boilerplate = [
        "Home | About | Contact | Login\n" * 40,
        "\n".join(f"• Item {i}" for i in range(80)),
        "Click here to subscribe! " * 60,
        "lorem ipsum dolor sit amet " * 30,
        "# # # # # " * 30 + " the and of " * 10,
        "1 2 3 4 5 6 7 8 9 10 " * 20 + "the of",
    ]
    for b in boilerplate:
        assert q.check(b) is not None or r.check(b) is not None, b[:40]


def test_config_overrides_and_errors():
    f = GopherQualityFilter(GopherQualityConfig(min_words=3), max_words=5)
    assert (f.config.min_words, f.config.max_words) == (3, 5)
    assert f.check("the cat and the dog and the bird") == "gopher_quality:max_words"
    assert GopherQualityFilter(min_words=None, min_stop_words=None).check("") is None
    with pytest.raises(ValueError, match="known options"):
        GopherQualityFilter(min_wrods=3)


def test_native_repetition_stats_match_python():
    f = GopherRepetitionFilter(top_ngrams=((1, 0.5), (2, 0.2), (3, 0.18)),
                               dup_ngrams=((2, 0.1), (5, 0.15), (10, 0.1)))
    rng = random.Random(11)
    alphabet = list("ab .,\n\n\r\t\x0b\x1c\x85\u2028\u3000é😀-") + ["the ", "cat ", "x\r\n"]
    docs = SAMPLE + ["".join(rng.choice(alphabet) for _ in range(rng.randrange(60)))
                     for _ in range(800)]
    rows = _C.text_repetition_stats(docs, strip=_STRIP_CODEPOINTS, top_ns=[1, 2, 3],
                                    dup_ns=[2, 5, 10], num_threads=2)
    for d, row in zip(docs, rows):
        assert row.tolist() == f.stats_python(d), repr(d[:80])


def test_native_repetition_bad_input():
    with pytest.raises(ValueError, match="n-gram"):
        _C.text_repetition_stats(["a b"], strip=[], top_ns=[0], dup_ns=[])
    with pytest.raises(TypeError):
        _C.text_repetition_stats([1], strip=[], top_ns=[2], dup_ns=[])


def test_build_filters():
    from fastlm.data.quality import build_filters

    assert [f.name for f in build_filters()] == ["gopher_quality", "gopher_repetition"]
    names = [f.name for f in build_filters(gopher_quality=False, c4=True, fineweb=True, num_threads=1)]
    assert names == ["gopher_repetition", "c4_quality", "fineweb_quality"]


def test_native_quality_stats_match_python():
    f = GopherQualityFilter(stop_words=("the", "of", "für", "i\u0307", "ⅰ"), bullets=("•", "- ", "ⅰ"))
    rng = random.Random(12)
    alphabet = list("ab .#\n\n\r\t\x0b\x1c\x85\u2028\u3000é😀-…•İIⅠ") + [
        "the ", "THE ", "Für ", "...", "x\r\n", " - ", "º", "²"]
    docs = SAMPLE + ["".join(rng.choice(alphabet) for _ in range(rng.randrange(60)))
                     for _ in range(1500)]
    from fastlm.data.quality import _unicode_tables

    bits, lower = _unicode_tables()
    rows = _C.text_quality_stats(docs, strip=_STRIP_CODEPOINTS, alpha_bits=bits, lower=lower,
                                 stop_words=sorted(f._stop), bullets=list(f.config.bullets),
                                 num_threads=2)
    for d, row in zip(docs, rows):
        assert row.tolist() == f.stats_python(d), repr(d[:80])
    with pytest.raises(ValueError, match="alpha bitmap"):
        _C.text_quality_stats(["x"], strip=[], alpha_bits=b"", lower={}, stop_words=[], bullets=[])
