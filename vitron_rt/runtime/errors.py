"""Errors a user can cause and fix: bad media, a bad region, an unreadable hybrid message,
a prompt longer than the context, sampling parameters out of range.

Every message is one line that says what was wrong and with what, so the CLI can print
`str(e)` after its prefix and exit non-zero, and the server can return it as the error
text of a 400 reply. Failures that are the bundle's or the program's fault are not
`VitronInputError`s (a broken bundle is `vitron_rt.bundle.BundleError`).

The base class is a `ValueError`: a caller that already treats bad values as `ValueError`
keeps working, and one that wants only the user-facing kind catches `VitronInputError`.
"""

from __future__ import annotations


class VitronInputError(ValueError):
    """Bad input from the user. `str(e)` is one line (newlines in the message are flattened)."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).splitlines()))


class MediaError(VitronInputError):
    """An image or video that is missing, empty, truncated, corrupt or of an unsupported kind;
    or an output file that cannot be written."""


class RegionError(VitronInputError):
    """A region (box or sketch mask) outside the image, inverted, empty or malformed."""


class MessageError(VitronInputError):
    """A hybrid message, chat message or module name that cannot be read."""


class ContextLengthError(VitronInputError):
    """A prompt (with its image and video tokens) that does not fit the model's context.

    `tokens` and `limit`, when given, say by how much: the caller can trim and retry."""

    def __init__(self, message: str, *, tokens: int | None = None, limit: int | None = None):
        super().__init__(message)
        self.tokens = tokens
        self.limit = limit


class SamplingError(VitronInputError):
    """Sampling parameters out of range (temperature, top-k, top-p, penalty, token budget)."""
