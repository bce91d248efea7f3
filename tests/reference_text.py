"""Plain-Python references for the native text passes (the specification of fastlm._C.text_*)."""
import re

# Code points the control step removes: C0 except \t \n \r, DEL, C1, and the BOM U+FEFF.
CONTROL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufeff]")


def clean_reference(text, *, remove_control=True, whitespace=True, keep_indentation=True,
                    max_blank_lines=2):
    """Control removal then whitespace normalization, one regex/str step at a time."""
    if remove_control:
        text = CONTROL_RE.sub("", text)
    if not whitespace:
        return text
    text = re.sub("\r\n|\r|\u2028|\u2029", "\n", text)
    lines = []
    for line in text.split("\n"):
        line = line.rstrip(" \t")
        body = line.lstrip(" \t")
        indent = line[: len(line) - len(body)] if keep_indentation and body else ""
        lines.append(indent + re.sub("[ \t]+", " ", body))
    text = "\n".join(lines)
    text = re.sub("\n{%d,}" % (max_blank_lines + 2), "\n" * (max_blank_lines + 1), text)
    return text.strip("\n")


def scan_reference(text, triggers):
    """True if any code point of `text` is in the set `triggers`."""
    return any(ord(ch) in triggers for ch in text)


# ---------------------------------------------------------------- quality statistics
# Straightforward re-statements of each statistic in fastlm.data.quality (see its docstring for
# the definitions and where they deviate from datatrove). Filters reject when a statistic is
# beyond its threshold; tests compare decisions made from these numbers.

PUNCT = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~“”‘’«»‹›„‚…–—―·•¡¿"


def ref_words(text):
    words = []
    for token in re.split(r"\s+", text):
        start, end = 0, len(token)
        while start < end and token[start] in PUNCT:
            start += 1
        while end > start and token[end - 1] in PUNCT:
            end -= 1
        if end > start:
            words.append(token[start:end])
    return words


def gopher_quality_stats(text, stop_words=("the", "be", "to", "of", "and", "that", "have", "with"),
                         bullets=("•", "‣", "◦", "⁃", "∙", "- ", "* ")):
    words = ref_words(text)
    n = len(words)
    lines = text.splitlines() or [""]
    return {
        "words": n,
        "mean_word_length": sum(map(len, words)) / n if n else 0.0,
        "hash_ratio": text.count("#") / n if n else 0.0,
        "ellipsis_ratio": (text.count("...") + text.count("…")) / n if n else 0.0,
        "bullet_lines": sum(1 for l in lines if any(l.lstrip().startswith(b) for b in bullets)) / len(lines),
        "ellipsis_lines": sum(1 for l in lines if l.rstrip().endswith("...") or l.rstrip().endswith("…")) / len(lines),
        "alpha_words": sum(1 for w in words if any(c.isalpha() for c in w)) / n if n else 1.0,
        "stop_words": sum(1 for w in words if w.lower() in stop_words),
    }


def _dups(items):
    first = {}
    for i, x in enumerate(items):
        first.setdefault(x, i)
    repeats = [x for i, x in enumerate(items) if first[x] != i]
    return len(repeats), sum(map(len, repeats))


def gopher_repetition_stats(text, top=(2, 3, 4), dup=(5, 6, 7, 8, 9, 10)):
    total = len(text)
    paragraphs = re.split(r"\n{2,}", text.strip())
    lines = [l for l in text.splitlines() if l.strip()]
    pc, pch = _dups(paragraphs)
    lc, lch = _dups(lines)
    words = ref_words(text)
    out = {"dup_para_frac": pc / len(paragraphs), "dup_para_char_frac": pch / total,
           "dup_line_frac": lc / max(1, len(lines)), "dup_line_char_frac": lch / total}
    for n in top:
        grams = [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]
        counts, first = {}, {}
        for i, g in enumerate(grams):
            counts[g] = counts.get(g, 0) + 1
            first.setdefault(g, i)
        best = max(counts, key=lambda g: (counts[g], -first[g])) if grams else ""
        out[f"top_{n}_gram"] = len(best) * counts.get(best, 0) / total
    for n in dup:
        seen, chars, i = set(), 0, 0
        while i + n <= len(words):
            g = " ".join(words[i:i + n])
            if g in seen:
                chars += len(g)
                i += n
            else:
                seen.add(g)
                i += 1
        out[f"dup_{n}_gram"] = chars / total
    return out


def fineweb_stats(text, stop_chars=(".", "'", '"', "!", "?"), short=30):
    lines = text.split("\n")
    nonempty = [l for l in lines if l.strip()]
    return {
        "line_punct_ratio": sum(1 for l in lines if l[-1:] in stop_chars) / len(lines),
        "short_line_ratio": sum(1 for l in lines if len(l) <= short) / len(lines),
        "char_dup_ratio": _dups(nonempty)[1] / max(1, len(text.replace("\n", ""))),
        "list_ratio": text.count("\n") / max(1, len(ref_words(text))),
    }
