"""The assistant's side of a sample: prose, then the hybrid message, then the signal tokens.

    Here is the red circle. <Module>segment_image</Module><Instruction>the red circle</Instruction>
    <Region>(0.12, 0.30, 0.41, 0.62)</Region><sig_0><sig_1><sig_2><sig_3>

(one line in a sample; wrapped here). This is DESIGN.md's grammar, which
`vitron_rt.runtime.messages.parse` reads, written with the paper's capitalised tag
names. The lower-case spelling would collide with the model's vocabulary: `<region>` is
also the *input* placeholder (`vitron_rt.models.tokenizer.REGION_TOKEN`), a special token
that the runtime's streaming decoder drops from the text, so a reply that closed a region
with it would reach the parser as `(0.1, ...)</region>` and fail. The tags are
case-insensitive, so `<Region>` is the same field to the parser and a different token to
the tokenizer; the tokenizer keeps all six tags as single, non-special tokens (`vocab`).

Regions are written with two decimals: a fixed width the model learns digit by digit,
and 1/100 of a 128 px image is finer than a pixel.
"""

from __future__ import annotations

from collections.abc import Sequence

from vitron_rt.models.tokenizer import signal_tokens

MODULE_OPEN, MODULE_CLOSE = "<Module>", "</Module>"
INSTRUCTION_OPEN, INSTRUCTION_CLOSE = "<Instruction>", "</Instruction>"
REGION_OPEN, REGION_CLOSE = "<Region>", "</Region>"
MESSAGE_TAGS: tuple[str, ...] = (
    MODULE_OPEN,
    MODULE_CLOSE,
    INSTRUCTION_OPEN,
    INSTRUCTION_CLOSE,
    REGION_OPEN,
    REGION_CLOSE,
)

Box = tuple[float, float, float, float]


def round_box(box: Sequence[float]) -> Box:
    """The box as the reply writes it: each coordinate clipped to [0, 1] and rounded to
    two decimals, so the prompt's region and the message's region are the same numbers."""
    if len(box) != 4:
        raise ValueError(f"a box has 4 coordinates, got {len(box)}")
    x1, y1, x2, y2 = (round(min(1.0, max(0.0, float(v))), 2) for v in box)
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f"box {tuple(box)} is empty after rounding to two decimals")
    return (x1, y1, x2, y2)


def format_region(box: Sequence[float]) -> str:
    """"(0.12, 0.30, 0.41, 0.62)": the region field's text."""
    return "(" + ", ".join(f"{v:.2f}" for v in round_box(box)) + ")"


def hybrid_reply(
    prose: str,
    module: str,
    instruction: str,
    num_signal_tokens: int,
    region: Sequence[float] | None = None,
) -> str:
    """Prose, a space, the message's fields in canonical order, then <sig_0>..<sig_{K-1}>."""
    if not prose or not instruction:
        raise ValueError("a hybrid reply needs prose and an instruction")
    fields = [f"{MODULE_OPEN}{module}{MODULE_CLOSE}", f"{INSTRUCTION_OPEN}{instruction}{INSTRUCTION_CLOSE}"]
    if region is not None:
        fields.append(f"{REGION_OPEN}{format_region(region)}{REGION_CLOSE}")
    return f"{prose} " + "".join(fields) + "".join(signal_tokens(num_signal_tokens))
