"""Text normalization: HTML/LaTeX stripping, mojibake repair, Unicode form, control chars, whitespace.

Steps run in this order, each switchable in ``NormalizeConfig``:

1. ``html``: HTML to text (tags dropped, script/style contents dropped, entities decoded, block
   tags become newlines). Off by default: most corpora are not HTML.
2. ``latex``: LaTeX markup removal (comments, commands, environment markers; math kept or dropped).
   Off by default.
3. ``fix_mojibake``: ftfy's ``fix_text`` with ``ftfy_options``. ftfy's own HTML unescaping, line-break,
   control-character and Unicode-normalization steps are switched off by default, because steps 1,
   4, 5 and 6 own those jobs; so this step means "mojibake and encoding glitches" only.
4. ``unicode_form``: ``unicodedata.normalize`` with NFC (default), NFKC, or None.
5. ``remove_control``: drop C0/C1 control characters (keeping ``\\t``, ``\\n``, ``\\r``) and U+FEFF.
6. ``whitespace``: ``\\r\\n``, ``\\r``, U+2028, U+2029 become ``\\n``; runs of spaces/tabs inside a line
   become one space (leading indentation kept unless ``keep_indentation=False``); trailing spaces
   removed; at most ``max_blank_lines`` consecutive empty lines; leading/trailing blank lines and
   the final newline trimmed.

Steps 5 and 6 are one native pass (``fastlm._C.text_clean``). ftfy is pure Python (a few MB/s), so
step 3 first runs a native scan that proves most documents unchanged by ftfy, and calls ftfy only on
the lines that might change; the output is identical to calling ftfy on every document (see
``ftfy_trigger_set`` for the argument, and tests/test_normalize.py for the checks).
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
import warnings
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Literal, Optional, Sequence

from fastlm import _C

try:  # Python 3.11+
    import re._constants as _sre_constants
    import re._parser as _sre_parse
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants as _sre_constants  # type: ignore[no-redef]
    import sre_parse as _sre_parse  # type: ignore[no-redef]

__all__ = ["FTFY_DEFAULTS", "NormalizeConfig", "Normalizer", "ftfy_trigger_set", "html_to_text",
           "strip_latex"]

# ftfy options used by the mojibake step; keys are ftfy.TextFixerConfig fields.
# ftfy 6.3's fix_text (explain=False, what this step calls) runs fix_encoding with ftfy's default
# config, so restore_byte_a0, replace_lossy_sequences and decode_inconsistent_utf8 stay on whatever
# is set here (fix_text("voilÃ  le travail", restore_byte_a0=False) == "voilà le travail");
# only ftfy.fix_and_explain honours them.
FTFY_DEFAULTS: dict = {
    "unescape_html": False,  # the html step decodes entities; plain text keeps "&amp;" as written
    "remove_terminal_escapes": True,
    "fix_encoding": True,  # the point of the step: undo UTF-8 decoded as latin-1/cp1252/...
    "restore_byte_a0": True,
    "replace_lossy_sequences": True,
    "decode_inconsistent_utf8": True,
    "fix_c1_controls": True,
    "fix_latin_ligatures": True,  # "ﬁ" -> "fi": harmless and helps tokenization
    "fix_character_width": False,  # fullwidth forms are normal in CJK text; NFKC does it if wanted
    "uncurl_quotes": False,  # curly quotes are legitimate text, not damage
    "fix_line_breaks": False,  # the whitespace step owns line breaks
    "fix_surrogates": True,
    "remove_control_chars": False,  # the remove_control step owns control characters
    "normalization": None,  # the unicode_form step owns normalization
    "max_decode_length": 1_000_000,
}

_HTML_DROP = frozenset({"script", "style", "noscript", "template", "head", "svg"})
# Tags that end a paragraph (a blank line) and tags that end a line (one newline).
_HTML_PARAGRAPH = frozenset(
    "address article aside blockquote details dialog div dl fieldset figcaption figure footer "
    "form h1 h2 h3 h4 h5 h6 header hr main nav ol p pre section summary table title ul".split())
_HTML_LINE = frozenset("br dd dt li tr".split())


@dataclass
class NormalizeConfig:
    """Which normalization steps run and how (see the module docstring for their order)."""

    html: bool = False  # most corpora are plain text; HTML parsing would eat "<" in code
    latex: bool = False  # only for arXiv-like sources
    latex_math: Literal["keep", "drop"] = "keep"  # keep math verbatim ($x^2$) or drop it
    fix_mojibake: bool = True  # ftfy: cheap with the native pre-scan, and mojibake is common
    ftfy_options: dict = field(default_factory=dict)  # overrides of FTFY_DEFAULTS
    ftfy_prescan: bool = True  # skip ftfy where the native scan proves it a no-op (same output)
    unicode_form: Optional[Literal["NFC", "NFKC", "NFD", "NFKD"]] = "NFC"  # NFC keeps meaning;
    # NFKC also folds compatibility forms (ligatures, widths, superscripts: "x²" -> "x2")
    remove_control: bool = True  # control characters carry no text and break tokenizers
    whitespace: bool = True  # collapse spaces, normalize newlines, cap blank lines
    keep_indentation: bool = True  # code and verse rely on leading spaces
    max_blank_lines: int = 2  # paragraph breaks survive, page-long gaps do not
    num_threads: int = 0  # native threads; 0 = all cores

    def __post_init__(self):
        if self.unicode_form not in ("NFC", "NFKC", "NFD", "NFKD", None):
            raise ValueError(f"unicode_form must be 'NFC', 'NFKC', 'NFD', 'NFKD' or None, "
                             f"got {self.unicode_form!r}")
        if self.latex_math not in ("keep", "drop"):
            raise ValueError(f"latex_math must be 'keep' or 'drop', got {self.latex_math!r}")
        if not isinstance(self.max_blank_lines, int) or self.max_blank_lines < 0:
            raise ValueError(f"max_blank_lines must be an int >= 0, got {self.max_blank_lines!r}")
        unknown = set(self.ftfy_options) - set(FTFY_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown ftfy_options {sorted(unknown)}; known: {sorted(FTFY_DEFAULTS)}")


# ---------------------------------------------------------------------------------------------
# Mojibake step: which documents can ftfy change at all?
#
# ftfy.fix_text splits a document into segments at "\n" (and every max_decode_length chars) and
# fixes each segment on its own. A segment comes back unchanged when, in fix_and_explain's first
# round, no step changes it:
#   - fix_encoding returns its input when the text is ASCII or `not badness.is_bad(text)`.
#     is_bad is one regex (BADNESS_RE), an alternation of 1-3 character sequences; every
#     alternative needs one character from some finite class at some position. Picking one such
#     class per alternative gives a set B: a text without any character of B is never "bad".
#   - every other enabled fixer only touches a known set of characters (ftfy.chardata tables):
#     C1 controls, ligatures, width forms, curly quotes, line breaks, surrogates, ESC, controls,
#     "&" for HTML entities.
#   - normalization (off by default here) changes only text that is not already normalized.
# So a document with none of these characters is returned unchanged; the native scan finds them.
# The condition is sufficient, not necessary (ftfy would also leave most flagged lines alone); for
# flagged documents we still skip lines that have no trigger, or only badness triggers and
# `not is_bad(line)`, which is exactly ftfy's own first test. Everything else goes to ftfy.
# ---------------------------------------------------------------------------------------------

def _class_of(item) -> Optional[set]:
    """Code points one regex position can match, or None when not a finite listed class."""
    op, av = item
    if op == _sre_constants.LITERAL:
        return {av}
    if op == _sre_constants.IN:
        out: set = set()
        for o, a in av:
            if o == _sre_constants.LITERAL:
                out.add(a)
            elif o == _sre_constants.RANGE:
                out.update(range(a[0], a[1] + 1))
            else:  # NEGATE, CATEGORY (\s, \w): not finite
                return None
        return out
    return None


def _commonness(chars: set) -> float:
    """How often a class's characters occur in clean text (lower = better trigger choice)."""
    cost = 0.0
    for cp in chars:
        if cp < 128:
            return float("inf")  # an ASCII trigger would flag every document
        ch = chr(cp)
        if unicodedata.category(ch) in ("Ll", "Lu"):
            name = unicodedata.name(ch, "")
            cost += 1000 if name.startswith(("LATIN", "GREEK", "CYRILLIC")) else 100
        else:
            cost += 1
    return cost


def _badness_triggers() -> set:
    """Set B: one character class per BADNESS_RE alternative (see the block comment above)."""
    from ftfy.badness import BADNESS_RE

    tree = _sre_parse.parse(BADNESS_RE.pattern, BADNESS_RE.flags)
    items = list(tree)
    if len(items) == 1 and items[0][0] == _sre_constants.BRANCH:
        alternatives = items[0][1][1]
    else:
        alternatives = [items]
    triggers: set = set()
    for alt in alternatives:
        classes = [c for c in (_class_of(it) for it in alt) if c is not None]
        if not classes:
            raise RuntimeError("ftfy badness alternative without a finite class")
        triggers |= min(classes, key=_commonness)
    return triggers


def _fixer_triggers(opts: dict) -> set:
    """Characters that the enabled non-encoding fixers of ftfy can change."""
    from ftfy import chardata

    t: set = set()
    if opts["unescape_html"]:
        t.add(ord("&"))
    if opts["remove_terminal_escapes"]:
        t.add(0x1B)
    if opts["fix_c1_controls"]:
        t.update(range(0x80, 0xA0))
    if opts["fix_latin_ligatures"]:
        t.update(chardata.LIGATURES)
    if opts["fix_character_width"]:
        t.update(chardata.WIDTH_MAP)
    if opts["uncurl_quotes"]:
        t.update([0x02BC, *range(0x2018, 0x2020)])
    if opts["fix_line_breaks"]:
        t.update([0x0D, 0x2028, 0x2029, 0x85])
    if opts["fix_surrogates"]:
        t.update(range(0xD800, 0xE000))
    if opts["remove_control_chars"]:
        t.update(chardata.CONTROL_CHARS)
    return t


def ftfy_trigger_set(ftfy_options: Optional[dict] = None) -> tuple[frozenset, frozenset]:
    """(badness triggers, fixer triggers): text with neither is returned unchanged by ftfy.

    >>> bad, fix = ftfy_trigger_set()
    >>> ord("Ã") in bad, ord("e") in bad, 0x80 in fix
    (True, False, True)
    """
    opts = {**FTFY_DEFAULTS, **(ftfy_options or {})}
    bad = _badness_triggers() if opts["fix_encoding"] else set()
    return frozenset(bad), frozenset(_fixer_triggers(opts))


def _char_class_re(chars) -> re.Pattern:
    if not chars:
        return re.compile(r"(?!)")
    return re.compile("[" + "".join(re.escape(chr(c)) for c in sorted(chars)) + "]")


class _Mojibake:
    """The ftfy step with the native pre-scan (or plain ftfy when prescan is off)."""

    def __init__(self, ftfy_options: dict, prescan: bool, num_threads: int):
        import ftfy
        from ftfy.badness import is_bad

        self.opts = {**FTFY_DEFAULTS, **ftfy_options}
        self.config = ftfy.TextFixerConfig(**self.opts, explain=False)
        self.fix_text = ftfy.fix_text
        self.is_bad = is_bad
        self.prescan = prescan
        self.num_threads = num_threads
        # The trigger sets are derived from ftfy 6.x's fixers and tables. If this ftfy has other
        # options (new fixers) or a badness regex we cannot read, plain ftfy is the safe answer.
        known = set(FTFY_DEFAULTS) | {"explain"}
        try:
            if set(ftfy.TextFixerConfig._fields) != known:
                raise RuntimeError(f"ftfy {ftfy.__version__} has options {ftfy.TextFixerConfig._fields}")
            bad, fix = ftfy_trigger_set(self.opts)
        except Exception as e:  # noqa: BLE001 - any surprise means: no fast path
            warnings.warn(f"ftfy pre-scan disabled, calling ftfy on every document: {e}")
            self.prescan = False
            bad, fix = set(), set()
        bits = bytearray(0x110000 // 8)
        for cp in bad | fix:
            bits[cp >> 3] |= 1 << (cp & 7)
        self.bitmap = bytes(bits)
        self.any_re = _char_class_re(bad | fix)
        self.fix_re = _char_class_re(fix)
        # "auto"/True HTML unescaping keeps state across segments in fix_text: fix whole docs.
        self.by_line = not self.opts["unescape_html"]
        self.form = self.opts["normalization"]

    def __call__(self, texts: list) -> list:
        if not self.prescan:
            return [self.fix_text(t, self.config) for t in texts]
        flags = _C.text_scan_triggers(texts, self.bitmap, self.num_threads)
        out = []
        for t, flag in zip(texts, flags):
            if self.form is not None and not unicodedata.is_normalized(self.form, t):
                flag = True
            if not flag:
                out.append(t)
            elif not self.by_line:
                out.append(self.fix_text(t, self.config))
            else:
                out.append(self._fix_lines(t))
        return out

    def _fix_lines(self, text: str) -> str:
        parts = text.split("\n")
        pieces = []
        for i, part in enumerate(parts):
            line = part + "\n" if i < len(parts) - 1 else part
            if line and self._may_change(line):
                line = self.fix_text(line, self.config)
            pieces.append(line)
        return "".join(pieces)

    def _may_change(self, line: str) -> bool:
        if self.form is not None and not unicodedata.is_normalized(self.form, line):
            return True
        if not self.any_re.search(line):
            return False
        if self.fix_re.search(line) or len(line) > self.opts["max_decode_length"]:
            return True  # (is_bad on a whole over-long line differs from ftfy's per-chunk test)
        return self.is_bad(line)


# ---------------------------------------------------------------------------------------------
# HTML and LaTeX
# ---------------------------------------------------------------------------------------------

# HTML: the stdlib parser (robust on broken markup, decodes every entity) runs at ~5-10 MB/s on
# the benchmark's HTML pages (benchmarks/bench_normalize.py). The step is off by default and HTML
# corpora are usually extracted upstream (trafilatura, resiliparse), so a native tag scanner was
# not worth its second definition of HTML yet.
class _TextExtractor(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list = []
        self.skip = 0  # depth inside script/style/...
        self.pending = 0  # newlines owed before the next text (2 = paragraph break)

    def _break(self, tag):
        if tag in _HTML_PARAGRAPH:
            self.pending = 2
        elif tag in _HTML_LINE:
            self.pending = max(self.pending, 1)

    def handle_starttag(self, tag, attrs):
        if tag in _HTML_DROP:
            self.skip += 1
        self._break(tag)

    def handle_startendtag(self, tag, attrs):
        self._break(tag)

    def handle_endtag(self, tag):
        if tag in _HTML_DROP:
            self.skip = max(0, self.skip - 1)
        self._break(tag)

    def handle_data(self, data):
        if self.skip or not data:
            return
        if data.isspace():  # source formatting between tags: a space at most
            if not self.pending:
                self.parts.append(" ")
            return
        if self.pending and self.parts:
            self.parts.append("\n" * self.pending)
        self.pending = 0
        self.parts.append(data)


def html_to_text(text: str) -> str:
    """Text content of an HTML document: tags and script/style dropped, entities decoded.

    Paragraph-level tags (p, div, h1..., ul, table, ...) become a blank line; br, li, tr, dt, dd
    a newline. Whitespace inside text is left for the whitespace step.

    >>> html_to_text("<p>Fish &amp; chips</p><script>x()</script><ul><li>a<li>b</ul>")
    'Fish & chips\\n\\na\\nb'
    """
    parser = _TextExtractor()
    parser.feed(text)
    parser.close()
    return "".join(parser.parts)


_LATEX_MATH_ENVS = ("equation", "align", "gather", "multline", "eqnarray", "math", "displaymath",
                    "flalign", "alignat")
_LATEX_MATH_RE = re.compile(
    r"\$\$.*?\$\$|(?<!\\)\$(?:\\.|[^$\\])+?\$|\\\[.*?\\\]|\\\(.*?\\\)"
    r"|\\begin\{(" + "|".join(_LATEX_MATH_ENVS) + r")\*?\}.*?\\end\{\1\*?\}",
    re.S)
_LATEX_COMMENT_RE = re.compile(r"(?<!\\)%[^\n]*")
# Commands whose arguments are not running text: dropped with their arguments.
_LATEX_DROP_ARGS = ("label", "ref", "eqref", "pageref", "cite", "citep", "citet", "nocite",
                    "includegraphics", "bibliography", "bibliographystyle", "usepackage",
                    "documentclass", "input", "include", "vspace", "hspace", "newcommand",
                    "renewcommand", "setlength", "url", "href", "begin", "end")
_LATEX_DROP_RE = re.compile(
    r"\\(?:" + "|".join(_LATEX_DROP_ARGS) + r")\*?(?:\s*\[[^\]]*\])*(?:\s*\{[^{}]*\})*")
_LATEX_CMD_RE = re.compile(r"\\[A-Za-z]+\*?(?:\[[^\]]*\])*")
_LATEX_ESCAPES = {"\\%": "%", "\\&": "&", "\\_": "_", "\\$": "$", "\\#": "#", "\\{": "{",
                  "\\}": "}", "\\\\": "\n", "~": " "}
_LATEX_ESCAPE_RE = re.compile(r"\\[%&_$#{}\\]|~")
_LATEX_BRACE_RE = re.compile(r"(?<!\\)[{}]")


def _strip_latex_text(s: str) -> str:
    s = _LATEX_DROP_RE.sub("", s)
    s = _LATEX_CMD_RE.sub("", s)  # \textbf{x} -> {x}; \LaTeX -> ""
    s = _LATEX_BRACE_RE.sub("", s)  # group braces; escaped \{ \} are decoded next
    return _LATEX_ESCAPE_RE.sub(lambda m: _LATEX_ESCAPES[m.group(0)], s)


def strip_latex(text: str, *, math: str = "keep") -> str:
    """Plain text of LaTeX source: comments, commands and environment markers removed.

    Arguments of formatting commands are kept (``\\textbf{x}`` -> ``x``); references, citations,
    labels and preamble commands go with their arguments. Math (``$..$``, ``$$..$$``, ``\\(..\\)``,
    ``\\[..\\]``, equation-like environments) is kept verbatim or dropped (``math="drop"``).

    >>> strip_latex(r"\\section{Intro} We use \\emph{fast} $x^2$ methods~\\cite{a}. % note")
    'Intro We use fast $x^2$ methods . '
    """
    if math not in ("keep", "drop"):
        raise ValueError(f"math must be 'keep' or 'drop', got {math!r}")
    text = _LATEX_COMMENT_RE.sub("", text)
    out = []
    pos = 0
    for m in _LATEX_MATH_RE.finditer(text):
        out.append(_strip_latex_text(text[pos:m.start()]))
        if math == "keep":
            out.append(m.group(0))
        pos = m.end()
    out.append(_strip_latex_text(text[pos:]))
    return "".join(out)


# ---------------------------------------------------------------------------------------------

class Normalizer:
    """Applies a ``NormalizeConfig`` to documents.

    >>> Normalizer().normalize("  Caf\\u00c3\\u00a9  au   lait \\r\\n\\r\\n\\r\\n\\r\\nbon\\x00jour  ")
    '  Café au lait\\n\\n\\nbonjour'
    """

    def __init__(self, config: Optional[NormalizeConfig] = None, *,
                 num_threads: Optional[int] = None):
        self.config = config or NormalizeConfig()
        if num_threads is not None:  # the pipeline's thread setting overrides the config's
            self.config = dataclasses.replace(self.config, num_threads=num_threads)
        c = self.config
        self._mojibake = (_Mojibake(c.ftfy_options, c.ftfy_prescan, c.num_threads)
                          if c.fix_mojibake else None)

    def normalize(self, text: str) -> str:
        """Normalize one document."""
        return self.normalize_batch([text])[0]

    def normalize_batch(self, texts: Sequence[str]) -> list:
        """Normalize a batch (native steps run once over the batch, threads, GIL released)."""
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
        c = self.config
        if c.html:
            texts = [html_to_text(t) for t in texts]
        if c.latex:
            texts = [strip_latex(t, math=c.latex_math) for t in texts]
        if self._mojibake is not None:
            texts = self._mojibake(texts)
        if c.unicode_form is not None:
            texts = [unicodedata.normalize(c.unicode_form, t) for t in texts]
        if c.remove_control or c.whitespace:
            texts = _C.text_clean(texts, remove_control=c.remove_control, whitespace=c.whitespace,
                                  keep_indentation=c.keep_indentation,
                                  max_blank_lines=c.max_blank_lines, num_threads=c.num_threads)
        return texts

