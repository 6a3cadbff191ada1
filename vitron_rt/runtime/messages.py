"""Hybrid messages: the LLM's call to a back end, as text plus signal embeddings.

The model's reply is user-facing prose followed by the message:

    Here is the dog. <module>segment_video</module><instruction>the dog</instruction>
    <region>(0.1, 0.2, 0.5, 0.9)</region><sig_0><sig_1><sig_2><sig_3>

Grammar (what `parse` reads):

    reply       := prose message?
    message     := field+            one <module>, one or more <instruction>, at most one
                                     <region>, in any order (the canonical order is
                                     module, instructions, region)
    field       := <module> NAME </module>
                 | <instruction> TEXT </instruction>
                 | <region> (x1, y1, x2, y2) </region>

- Tags are case-insensitive and may hold whitespace (`< Module >`, `</ module>`).
- Between and after the fields only whitespace and signal tokens (`<sig_N>`) may stand;
  any other text there is an error, so nothing the model said is silently dropped.
- NAME is a module of `MODULES`, one of the paper's display names ("Video Segmentation"),
  or one of Vitron's letters A-G; case, spaces, hyphens and underscores do not matter.
- TEXT is stripped, and runs of whitespace inside it become one space.
- The region is read by `region.parse_region` (normalised, or whole numbers 0-100).
- The prose is everything before the first tag, stripped. A reply without any tag is
  plain prose: no message and no error (the `understand` path).

`parse` never raises: what it cannot read comes back as `ParseResult.error`, one line.
The signal part is not text: the generator gathers the LLM's last hidden states at the
signal tokens (`find_signal_tokens`) and attaches them with `HybridMessage.with_signal`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from vitron_rt.bundle import TokenizerInfo
from vitron_rt.runtime.errors import MessageError, VitronInputError
from vitron_rt.runtime.region import Box, parse_region, validate_region

# The `<module>` names (DESIGN.md). Kept equal to `vitron_rt.models.config.MODULES` by a
# test: the runtime may not import the models package.
MODULES: tuple[str, ...] = (
    "understand",
    "segment_image",
    "segment_video",
    "generate_image",
    "edit_image",
    "generate_video",
    "edit_video",
    "image_to_video",
)
# Vitron's back-end letters.
MODULE_LETTERS: dict[str, str] = {
    "A": "generate_image",
    "B": "segment_image",
    "C": "edit_image",
    "D": "generate_video",
    "E": "segment_video",
    "F": "edit_video",
    "G": "image_to_video",
}
# Display names the paper and its figures use, and a few common spellings of them.
DISPLAY_NAMES: dict[str, tuple[str, ...]] = {
    "understand": ("Understanding", "Image Understanding", "Video Understanding"),
    "segment_image": ("Image Segmentation", "Segment Image"),
    "segment_video": ("Video Segmentation", "Segment Video", "Video Tracking"),
    "generate_image": ("Image Generation", "Generate Image", "Text-to-Image"),
    "edit_image": ("Image Editing", "Edit Image"),
    "generate_video": ("Video Generation", "Generate Video", "Text-to-Video"),
    "edit_video": ("Video Editing", "Edit Video"),
    "image_to_video": ("Image-to-Video", "Image to Video Generation"),
}


def _key(name: str) -> str:
    """Lower case, and every run of spaces, hyphens, underscores etc. as one '_'."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


_ALIASES: dict[str, str] = {_key(m): m for m in MODULES}
_ALIASES.update({_key(letter): m for letter, m in MODULE_LETTERS.items()})
_ALIASES.update({_key(n): m for m, names in DISPLAY_NAMES.items() for n in names})


def resolve_module(name: str) -> str:
    """A module name, display name or letter -> its `MODULES` name; `MessageError` if unknown."""
    if not isinstance(name, str):
        raise MessageError(f"module name must be text, got {type(name).__name__}")
    module = _ALIASES.get(_key(name))
    if module is None:
        raise MessageError(
            f"unknown module {_snippet(name)}; known: {', '.join(MODULES)} (or Vitron's letters A-G)"
        )
    return module


def _snippet(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _clean(text: str) -> str:
    """Strip, and collapse inner runs of whitespace to one space."""
    return " ".join(text.split())


_TAG_NAMES = ("module", "instruction", "region")
_TAG = re.compile(r"<\s*(/?)\s*(module|instruction|region)\s*>", re.IGNORECASE)
_FILLER = re.compile(r"(?:\s|<sig_\d+>)*")  # what may stand between fields


# --------------------------------------------------------------------------- the message


@dataclass(frozen=True)
class HybridMessage:
    """One back-end call: module, instructions, optional region, the prose before it, and
    the signal embeddings (K, D) gathered at the signal tokens (None until attached).

    The constructor normalises (module aliases -> `MODULES` names, whitespace runs in
    instructions -> one space, prose stripped) and validates (at least one instruction, no tags inside the
    text fields, a valid region), raising `MessageError` or `RegionError`, so every
    `HybridMessage` can be formatted and parsed back to itself.
    """

    module: str
    instructions: tuple[str, ...]
    region: Box | None = None
    text: str = ""
    # (K, D) last-layer hidden states at <sig_0>..<sig_{K-1}>; not part of equality.
    signal: np.ndarray | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # the dataclass is frozen
        set_(self, "module", resolve_module(self.module))
        given = self.instructions
        if isinstance(given, str):
            given = (given,)
        elif not isinstance(given, (tuple, list)):
            raise MessageError(f"instructions must be a tuple of text, got {type(given).__name__}")
        instructions = tuple(given)
        if not instructions:
            raise MessageError("a hybrid message needs at least one instruction")
        cleaned = []
        for ins in instructions:
            if not isinstance(ins, str):
                raise MessageError(f"instructions must be text, got {type(ins).__name__}")
            ins = _clean(ins)
            if not ins:
                raise MessageError("an instruction is empty")
            if _TAG.search(ins):
                raise MessageError(f"instruction {_snippet(ins)} contains a message tag")
            cleaned.append(ins)
        set_(self, "instructions", tuple(cleaned))
        if self.region is not None:
            set_(self, "region", validate_region(self.region))
        if not isinstance(self.text, str):
            raise MessageError(f"message text must be text, got {type(self.text).__name__}")
        set_(self, "text", self.text.strip())
        if _TAG.search(self.text):
            raise MessageError(f"message prose {_snippet(self.text)} contains a message tag")

    def format(self) -> str:
        """The canonical text: prose, a space, then the tags in module-instructions-region
        order with lower-case tag names. `parse(m.format()).message == m`."""
        parts = [f"<module>{self.module}</module>"]
        parts += [f"<instruction>{ins}</instruction>" for ins in self.instructions]
        if self.region is not None:
            parts.append("<region>(" + ", ".join(_format_coord(v) for v in self.region) + ")</region>")
        body = "".join(parts)
        return f"{self.text} {body}" if self.text else body

    def with_signal(self, signal: np.ndarray) -> "HybridMessage":
        """This message with its signal embeddings (K, D) attached."""
        return dataclasses.replace(self, signal=signal)

    def to_dict(self) -> dict:
        """The message part of `run --json`: module, instructions, region (list) or None."""
        return {
            "module": self.module,
            "instructions": list(self.instructions),
            "region": None if self.region is None else list(self.region),
        }


def back_end_region(message: HybridMessage | None, user_box: Box | None) -> Box | None:
    """The region a back end is given: the message's own, else the user's box (a message
    that names none still acts on what the user pointed at)."""
    region = None if message is None else message.region
    return user_box if region is None else region


def _format_coord(v: float) -> str:
    """Shortest positional decimal that reads back as the same float (no exponent, which
    some readers of the text would not expect)."""
    return np.format_float_positional(float(v), unique=True, trim="0")


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class ParseResult:
    """What `parse` read: the prose, and the message or an error (never both).

    `message is None and error is None`: the reply is plain prose, no back end is called.
    """

    text: str
    message: HybridMessage | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def unwrap(self) -> HybridMessage | None:
        """The message (or None for plain prose); raises `MessageError` on a parse error."""
        if self.error is not None:
            raise MessageError(self.error)
        return self.message


def parse(reply: str) -> ParseResult:
    """Read a model reply (see the module docstring for the grammar). Never raises."""
    if not isinstance(reply, str):
        return ParseResult(text="", error=f"expected the reply as text, got {type(reply).__name__}")
    first = _TAG.search(reply)
    if first is None:
        return ParseResult(text=reply.strip())
    prose = reply[: first.start()].strip()
    try:
        return ParseResult(text=prose, message=_parse_fields(reply, first.start(), prose))
    except VitronInputError as e:
        return ParseResult(text=prose, error=f"hybrid message: {e}")
    except Exception as e:  # a parser bug must not take the request down; report it as a value
        return ParseResult(text=prose, error=f"hybrid message: unreadable ({type(e).__name__}: {e})")


def _parse_fields(reply: str, pos: int, prose: str) -> HybridMessage:
    fields: dict[str, list[str]] = {name: [] for name in _TAG_NAMES}
    end = len(reply)
    while True:
        pos = _FILLER.match(reply, pos).end()
        if pos >= end:
            break
        tag = _TAG.match(reply, pos)
        if tag is None:
            raise MessageError(f"unexpected text {_snippet(reply[pos:])} after a tag; only tags may follow")
        closing, name = tag.group(1), tag.group(2).lower()
        if closing:
            raise MessageError(f"</{name}> without a matching <{name}>")
        close = _TAG.search(reply, tag.end())
        if close is None or not close.group(1) or close.group(2).lower() != name:
            found = "the end of the text" if close is None else repr(close.group(0))
            raise MessageError(f"<{name}> is not closed (found {found} before </{name}>)")
        fields[name].append(reply[tag.end() : close.start()])
        pos = close.end()

    modules, instructions, regions = fields["module"], fields["instruction"], fields["region"]
    if len(modules) != 1:
        raise MessageError(
            "no <module> tag" if not modules else f"{len(modules)} <module> tags; a message calls one module"
        )
    if not instructions:
        raise MessageError("no <instruction> tag; a message needs at least one")
    for ins in instructions:
        if not _clean(ins):
            raise MessageError("an <instruction> is empty")
    if len(regions) > 1:
        raise MessageError(f"{len(regions)} <region> tags; a message has at most one")
    region = parse_region(regions[0]) if regions else None
    return HybridMessage(module=modules[0], instructions=tuple(instructions), region=region, text=prose)


# --------------------------------------------------------------------------- signal tokens


@dataclass(frozen=True)
class SignalPositions:
    """Where each signal token <sig_k> stands in a token sequence (its last occurrence),
    or None where the model did not emit it."""

    positions: tuple[int | None, ...]

    @property
    def complete(self) -> bool:
        """Whether all K signal tokens were emitted (else the runtime appends them)."""
        return all(p is not None for p in self.positions)

    @property
    def missing(self) -> tuple[int, ...]:
        """The k of every <sig_k> not emitted."""
        return tuple(k for k, p in enumerate(self.positions) if p is None)

    def indices(self) -> np.ndarray:
        """(K,) int64 positions, to gather hidden states with; `MessageError` if incomplete."""
        if not self.complete:
            raise MessageError(f"signal tokens {list(self.missing)} were not emitted")
        return np.array(self.positions, dtype=np.int64)


def signal_token_ids(info: TokenizerInfo) -> tuple[int, ...]:
    """The ids of <sig_0>..<sig_{K-1}>, in order, from the bundle's tokenizer section."""
    try:
        return tuple(info.special_token_ids[t] for t in info.signal_tokens)
    except KeyError as e:
        raise MessageError(f"signal token {e.args[0]!r} has no id in the bundle's tokenizer") from None


def find_signal_tokens(token_ids: Sequence[int] | np.ndarray, signal_ids: Sequence[int]) -> SignalPositions:
    """Positions of the signal tokens in `token_ids` (e.g. the generated ids), in k order."""
    ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)  # (T,)
    out: list[int | None] = []
    for sid in signal_ids:
        hits = np.flatnonzero(ids == sid)
        out.append(int(hits[-1]) if hits.size else None)
    return SignalPositions(tuple(out))

