"""Strings from outside made safe for a terminal and for a model card: the one sanitizer.

Every string that comes from a file, the Hub or a plugin and can reach a terminal passes `safe_line` (a
single-line field) or `safe_text` (a field that is legitimately multi-line, e.g. a head set's description)
where it enters: head-set metadata when it is read (`headhunter.format.headset_io.parse_metadata`, so `show`,
`pull`, `show user/repo`, `search --details` and every library caller see the same safe text), Hub search
results, plugin listings, and the CLI's `Error:`/`Warning:` lines as a last net.

What is escaped, visibly and reversibly-readable (`\\x1b`, `\\u202e`), never silently dropped:
- C0 control characters (U+0000-U+001F, so ESC and with it every CSI `ESC [ ...` and OSC `ESC ] ... BEL`
  sequence, BEL, backspace, carriage return), DEL (U+007F) and C1 controls (U+0080-U+009F, including the
  one-byte CSI U+009B and OSC U+009D);
- Unicode format characters (category Cf: bidi overrides and isolates U+202A-U+202E, U+2066-U+2069,
  U+200E/U+200F, zero-width and BOM characters), except the zero-width (non-)joiners U+200C/U+200D that
  emoji and several scripts need; line and paragraph separators (U+2028, U+2029); lone surrogates.
- a newline is kept by `safe_text` only (CRLF becomes LF), escaped as `\\n` by `safe_line`; a tab is kept by
  both.

The result holds only printable characters (plus LF/tab where kept), and `safe_line(safe_line(s)) ==
safe_line(s)`: text read, saved and read again does not grow. Backslashes are not doubled, so the escapes are
for reading, not for decoding.

Model cards (`card_line`, `card_text`, `card_code`, `card_string`): on top of the above, HTML is escaped
(`<script>` becomes `&lt;script&gt;`), markdown inline markup and link syntax is backslash-escaped, single-line
fields have their newlines folded to spaces, and each line of a multi-line field that would open a markdown
block (heading, quote, list, table, `---` rule or front-matter fence, code fence) is escaped. YAML front
matter is never built from text: huggingface_hub's `ModelCardData` dumps it (values quoted by PyYAML).
"""

from __future__ import annotations

import html
import json
import re
import unicodedata
from collections.abc import Iterable
from typing import Any

#: Format characters that are kept: zero-width non-joiner and joiner (emoji sequences, Indic and Arabic text).
_KEPT_FORMAT = frozenset("\u200c\u200d")


def _unsafe(char: str, keep_newline: bool) -> bool:
    if char == "\t" or (keep_newline and char == "\n"):
        return False
    code = ord(char)
    if code < 0x20 or 0x7F <= code <= 0x9F:
        return True
    if code < 0xA0:
        return False
    category = unicodedata.category(char)
    return (category == "Cf" and char not in _KEPT_FORMAT) or category in ("Zl", "Zp", "Cs")


def _escape(char: str) -> str:
    code = ord(char)
    if char == "\n":
        return "\\n"
    if char == "\r":
        return "\\r"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def safe_line(text: str) -> str:
    """`text` with every control, format and line-breaking character escaped visibly (newlines too)."""
    if not isinstance(text, str):
        raise TypeError(f"safe_line takes a str, got {type(text).__name__}")
    if text.isprintable() and "\n" not in text:  # the common case: nothing to do
        return text
    return "".join(_escape(c) if _unsafe(c, keep_newline=False) else c for c in text)


def safe_text(text: str) -> str:
    """`text` made safe like `safe_line`, but newlines kept (CRLF and a lone CR become LF): multi-line fields."""
    if not isinstance(text, str):
        raise TypeError(f"safe_text takes a str, got {type(text).__name__}")
    text = text.replace("\r\n", "\n")
    if text.replace("\n", "").isprintable():
        return text
    return "".join(_escape(c) if _unsafe(c, keep_newline=True) else c for c in text)


def one_line(text: str) -> str:
    """`text` on one line: runs of whitespace (newlines included) folded to one space, then `safe_line`."""
    return safe_line(" ".join(str(text).split()))


def is_safe(text: str, *, multiline: bool = False) -> bool:
    """Whether `text` already holds nothing `safe_line` (`safe_text` when `multiline`) would escape."""
    return (safe_text(text) if multiline else safe_line(text)) == text


def safe_tree(value: Any, *, multiline: Iterable[str] = (), _key: str | None = None) -> Any:
    """A copy of a JSON-like value (dicts, lists, scalars) with every string, keys included, passed through
    `safe_line`; values under a key named in `multiline` (at any depth) through `safe_text`."""
    keys = frozenset(multiline)
    return _tree(value, keys, _key)


def _tree(value: Any, keys: frozenset[str], key: str | None) -> Any:
    if isinstance(value, str):
        return safe_text(value) if key in keys else safe_line(value)
    if isinstance(value, dict):
        return {safe_line(k) if isinstance(k, str) else k: _tree(v, keys, k if isinstance(k, str) else None)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_tree(v, keys, key) for v in value]
    return value


# ----- model cards ------------------------------------------------------------------------------------------
_MD_INLINE = re.compile(r"([\\`*_{}\[\]()#+!|~])")
_BLOCK_START = re.compile(r"^(\s*)([-=+*>#|]|\d+[.)]|`{3,}|~{3,})")


def card_line(text: str) -> str:
    """A single-line field as inert markdown: safe, newlines folded to spaces, HTML and markup escaped."""
    folded = one_line(text)
    escaped = _MD_INLINE.sub(r"\\\1", html.escape(folded, quote=True))
    return _BLOCK_START.sub(r"\1\\\2", escaped)


def card_text(text: str) -> str:
    """A multi-line field as inert markdown paragraphs: each line escaped as `card_line`, and a line that
    would open a block (heading, quote, list, table, rule, `---` fence, code fence) escaped at its start."""
    return "\n".join(card_line(line) for line in safe_text(str(text)).split("\n"))


def card_code(text: str, *, table: bool = False) -> str:
    """A value shown inside an inline code span: safe, on one line, backticks replaced by `'` (a backtick
    would close the span; backslash escapes do not work inside one), HTML escaped; with `table=True` (the span
    sits in a table cell) `|` is escaped too, which GitHub-flavoured markdown requires even inside code."""
    folded = one_line(text)
    out = html.escape(folded.replace("`", "'"), quote=False)
    return out.replace("|", "\\|") if table else out


def card_string(text: str) -> str:
    """A value as a Python/JSON string literal inside a fenced code block: quoted and escaped by `json.dumps`,
    so it can end neither the string nor the block."""
    return json.dumps(safe_line(str(text))).replace("`", "\\u0060")


__all__ = ["card_code", "card_line", "card_string", "card_text", "is_safe", "one_line", "safe_line", "safe_text",
           "safe_tree"]
