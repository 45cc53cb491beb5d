"""Text a receiver controls, made safe to print on an operator's terminal.

A receiver writes its own ``Location`` header and response body, and both
end up in ``webhooks log`` and ``webhooks dead list``. Printed raw, an
``ESC [`` or ``ESC ]`` sequence could clear the screen, retitle the window,
hide lines or forge a row. Every human-output line goes through
:func:`printable`; ``--json`` output is left exact (JSON escapes control
characters itself).
"""

from __future__ import annotations

import unicodedata

__all__ = ["printable"]

#: Control (C0, DEL, C1), format (bidi overrides, zero-width) and line/paragraph
#: separator characters, and lone surrogates.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def printable(text: str) -> str:
    """``text`` with every character that steers a terminal shown as an escape.

    ``"\\x1b[2J"`` prints as ``\\x1b[2J``: visible, inert, and still telling
    the operator what the receiver sent.
    """
    if text.isprintable():
        return text
    return "".join(_escape(char) for char in text)


def _escape(char: str) -> str:
    if unicodedata.category(char) not in _UNSAFE_CATEGORIES:
        return char
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
