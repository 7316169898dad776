"""A model server's text made valid Unicode before anything else sees it.

A server may split a character outside the Basic Multilingual Plane (an emoji) into its
two UTF-16 halves across stream pieces, each a ``\\ud83d``-style JSON escape; Python
decodes such a half to a lone surrogate, which has no UTF-8 form: the job store could
not write the answer and the gateway could not send it. The GPU slot passes every piece
through a TextMender: a half at the end of a piece waits for the next one, and a half
that never finds its partner becomes U+FFFD, the replacement character.
"""

from __future__ import annotations

__all__ = ["TextMender", "mend_text"]

_HIGH_SURROGATES = ("\ud800", "\udbff")


def mend_text(text: str) -> str:
    """``text`` with surrogate pairs joined and lone surrogates replaced by U+FFFD."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


class TextMender:
    """Mends a stream of pieces so that, joined, they equal :func:`mend_text` of the whole."""

    def __init__(self) -> None:
        self._held = ""  # a high surrogate that ended the last piece

    def feed(self, piece: str) -> str:
        """The valid text of ``piece`` so far (may be empty while a half waits)."""
        text = self._held + piece
        self._held = ""
        if text and _HIGH_SURROGATES[0] <= text[-1] <= _HIGH_SURROGATES[1]:
            self._held, text = text[-1], text[:-1]
        return mend_text(text)

    def flush(self) -> str:
        """What is still held, mended (a lone half becomes U+FFFD); call at the end."""
        held, self._held = self._held, ""
        return mend_text(held)
