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
