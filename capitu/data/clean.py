"""Clean one document's text; every step counts what it changed into a `Counter`.

The cleaned form: NFC Unicode, LF line endings, no control characters, no Project
Gutenberg boilerplate, no trailing spaces, at most one blank line in a row, and hard-wrapped
prose joined back into one line per paragraph while verse keeps one line per verse."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

# Unicode's control characters (category Cc) but newline and tab, and the invisible
# characters that carry no text: byte-order marks, zero-width spaces, soft hyphens.
CONTROL_CHARACTERS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff\u200b\u00ad]")
GUTENBERG_START = re.compile(r"^\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.I | re.M)
GUTENBERG_END = re.compile(
    r"^(\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg).*$", re.I | re.M
)
# A line that opens a paragraph on its own: a dialogue dash (Portuguese marks speech so).
PARAGRAPH_OPENER = re.compile(r"^(—|–|--|-\s)")

MIN_LINES_TO_MEASURE = 10  # fewer lines tell nothing about a wrap width
MIN_WRAP_WIDTH = 60  # verse and lists rarely reach this; PDF and e-text prose wraps at 65-100
WRAPPED_FRACTION = 0.3  # share of lines near the wrap width that marks a hard-wrapped text
NEAR_WIDTH = 0.8  # a line at least this share of the wrap width was broken by the wrap


def normalize_unicode(text: str, stats: Counter) -> str:
    normalized = unicodedata.normalize("NFC", text)
    if normalized != text:
        stats["nfc_changed_documents"] += 1
    return normalized


def normalize_line_endings(text: str, stats: Counter) -> str:
    if "\r" not in text:
        return text
    stats["line_endings_fixed_documents"] += 1
    return text.replace("\r\n", "\n").replace("\r", "\n")


def remove_control_characters(text: str, stats: Counter) -> str:
    text, removed = CONTROL_CHARACTERS.subn("", text)
    stats["control_characters_removed"] += removed
    return text


def strip_gutenberg(text: str, stats: Counter) -> str:
    """Drop the Project Gutenberg header (up to its START line) and footer (from END)."""
    start = GUTENBERG_START.search(text)
    if start is None:
        return text
    body = text[start.end():]
    end = GUTENBERG_END.search(body)
    if end is not None:
        body = body[: end.start()]
    stats["gutenberg_stripped_documents"] += 1
    stats["gutenberg_characters_removed"] += len(text) - len(body)
    return body


def tidy_lines(text: str) -> list[str]:
    """Lines without trailing spaces, at most one blank line in a row, none at the ends."""
    lines: list[str] = []
    for line in text.split("\n"):
        line = line.rstrip()
        if line.strip() == "":
            line = ""
            if not lines or lines[-1] == "":
                continue
        lines.append(line)
    while lines and lines[-1] == "":
        lines.pop()
    return lines


def wrap_width(lines: list[str]) -> int:
    """The column at which this text was hard-wrapped, or 0 if it was not.

    Hard-wrapped prose has many lines just short of one width (its 99th-percentile length);
    verse and one-line paragraphs spread their lengths out or stay short."""
    lengths = sorted(len(line) for line in lines if line)
    if len(lengths) < MIN_LINES_TO_MEASURE:
        return 0
    width = lengths[min(len(lengths) - 1, int(0.99 * len(lengths)))]
    near = sum(1 for length in lengths if NEAR_WIDTH * width <= length <= width)
    if width < MIN_WRAP_WIDTH or near / len(lengths) < WRAPPED_FRACTION:
        return 0
    return width


def reflow(lines: list[str], stats: Counter) -> list[str]:
    """Join hard-wrapped prose lines into paragraphs; verse and short lines stay as they are.

    A line that reaches near the wrap width was broken by the wrap, so the next line
    continues it, unless that next line is blank or opens a paragraph (a dialogue dash)."""
    width = wrap_width(lines)
    if not width:
        return lines
    out: list[str] = []
    joining = False
    joined = 0
    for line in lines:
        if joining and line and not PARAGRAPH_OPENER.match(line):
            glue = "" if out[-1].endswith("-") else " "  # keep "disse-" + "me" whole
            out[-1] = out[-1] + glue + line.lstrip()
            joined += 1
        else:
            out.append(line)
        joining = len(line) >= NEAR_WIDTH * width
    if joined:
        stats["reflowed_documents"] += 1
        stats["lines_joined"] += joined
    return out


def clean_document(text: str, stats: Counter) -> str:
    text = normalize_unicode(text, stats)
    text = normalize_line_endings(text, stats)
    text = remove_control_characters(text, stats)
    text = strip_gutenberg(text, stats)
    return "\n".join(reflow(tidy_lines(text), stats))
