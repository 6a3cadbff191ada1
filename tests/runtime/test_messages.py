"""The hybrid-message parser: it never raises, canonical messages round-trip, the paper's
spellings (display names, letters, capitalised tags, spaces) read the same, and every
unreadable message is a one-line error value. Signal tokens are found by id."""

import re

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from vitron_rt.bundle import FileRef, TokenizerInfo
from vitron_rt.models.config import MODULES as MODEL_MODULES
from vitron_rt.runtime.errors import MessageError, RegionError
from vitron_rt.runtime.messages import (
    DISPLAY_NAMES,
    MODULE_LETTERS,
    MODULES,
    HybridMessage,
    ParseResult,
    back_end_region,
    find_signal_tokens,
    parse,
    resolve_module,
    signal_token_ids,
)


def test_modules_match_the_model_config():
    assert MODULES == MODEL_MODULES


def test_the_papers_example():
    reply = (
        "The clock is on the wall. <Module> Video Segmentation </Module> "
        "<Instruction> segmentation: clock </Instruction> <Region> (0.23, 0.35, 0.41, 0.66) </Region>"
    )
    r = parse(reply)
    assert r.ok and r.text == "The clock is on the wall."
    assert r.message == HybridMessage(
        module="segment_video",
        instructions=("segmentation: clock",),
        region=(0.23, 0.35, 0.41, 0.66),
        text="The clock is on the wall.",
    )


def test_plain_prose_is_no_message_and_no_error():
    r = parse("  A cat sits on a mat.  ")
    assert r == ParseResult(text="A cat sits on a mat.") and r.ok and r.unwrap() is None


def test_signal_tokens_and_several_instructions():
    r = parse(
        "Sure.\n<module>edit_image</module>\n<instruction>the sky</instruction>\n"
        "<instruction>make it purple</instruction><sig_0><sig_1><sig_2><sig_3>\n"
    )
    assert r.message.instructions == ("the sky", "make it purple") and r.message.region is None


@pytest.mark.parametrize("letter, module", sorted(MODULE_LETTERS.items()))
def test_letters(letter, module):
    for spelling in (letter, letter.lower(), f"  {letter} "):
        assert resolve_module(spelling) == module


@pytest.mark.parametrize("module, names", sorted(DISPLAY_NAMES.items()))
def test_display_names(module, names):
    for name in names + (module, module.upper(), module.replace("_", " "), module.replace("_", "-")):
        assert resolve_module(name) == module
    assert resolve_module("  Video \n Segmentation ") == "segment_video"


def test_percent_regions():
    r = parse("<module>B</module><instruction>dog</instruction><region>(10, 20, 50, 60)</region>")
    assert r.message.region == (0.1, 0.2, 0.5, 0.6)


@pytest.mark.parametrize(
    "reply, what",
    [
        ("<module>fly</module><instruction>x</instruction>", "unknown module 'fly'"),
        ("<module>B</module>", "no <instruction>"),
        ("<instruction>x</instruction>", "no <module>"),
        ("<module>B</module><module>C</module><instruction>x</instruction>", "2 <module> tags"),
        ("<module>B</module><instruction>  </instruction>", "is empty"),
        ("<module>B</module><instruction>x", "<instruction> is not closed"),
        ("<module>B<instruction>x</instruction>", "<module> is not closed"),
        ("<module>B</module><instruction>x</region>", "<instruction> is not closed"),
        ("</module><instruction>x</instruction>", "without a matching <module>"),
        ("<module>B</module><instruction>x</instruction> and more text", "unexpected text 'and more text'"),
        ("<module>B</module> stray <instruction>x</instruction>", "unexpected text"),
        ("<module>B</module><instruction>x</instruction><region>(1, 2)</region>", "cannot read region"),
        ("<module>B</module><instruction>x</instruction><region>(.5, .1, .2, .9)</region>", "x1 < x2"),
        ("<module>B</module><instruction>x</instruction><region>(0.1,0.1,0.2,0.2)</region>"
         "<region>(0.1,0.1,0.2,0.2)</region>", "2 <region> tags"),
    ],
)
def test_errors_are_values(reply, what):
    r = parse("Prose first. " + reply)
    assert not r.ok and r.message is None and r.text == "Prose first."
    assert what in r.error and r.error.startswith("hybrid message: ") and "\n" not in r.error
    with pytest.raises(MessageError):
        r.unwrap()


def test_non_text_input_is_an_error_value():
    assert not parse(None).ok and not parse(b"<module>B</module>").ok


# --------------------------------------------------------------------------- properties

# Text fragments that look like the grammar, to drive the parser into its corners.
fragments = st.sampled_from(
    [
        "<module>", "</module>", "<Instruction>", "</instruction>", "<region>", "</REGION>", "< module >",
        "</ region>", "<sig_0>", "<sig_12>", "segment_video", "B", "Video Segmentation", "(0.1, 0.2, 0.5, 0.9)",
        "(10, 20, 50, 60)", "(1e400, 0, 1, 1)", "(-0, 0, .5, 1.)", "the dog", " ", "\n", "<", ">", "/", ",", "(",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_arbitrary_text_never_raises(text):
    r = parse(text)
    assert isinstance(r, ParseResult) and (r.message is None or r.error is None)


@settings(max_examples=600, deadline=None)
@given(st.lists(st.one_of(fragments, st.text(max_size=5)), max_size=14).map("".join))
def test_grammar_like_text_never_raises(text):
    r = parse(text)
    assert isinstance(r, ParseResult) and (r.message is None or r.error is None)
    if r.error is not None:
        assert "\n" not in r.error and "unreadable" not in r.error  # no internal failure
    if r.message is not None:
        assert parse(r.message.format()).message == r.message


def _no_tags(s: str) -> bool:
    return re.search(r"<\s*/?\s*(module|instruction|region)\s*>", s, re.I) is None


words = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=30)
instructions = words.filter(lambda s: s.strip() and _no_tags(s))
prose = st.one_of(st.just(""), words.filter(_no_tags))
unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@st.composite
def regions(draw):
    x1, x2 = sorted(draw(st.tuples(unit, unit)))
    y1, y2 = sorted(draw(st.tuples(unit, unit)))
    assume(x1 < x2 and y1 < y2)
    return (x1, y1, x2, y2)


messages = st.builds(
    HybridMessage,
    module=st.sampled_from(MODULES),
    instructions=st.lists(instructions, min_size=1, max_size=3).map(tuple),
    region=st.one_of(st.none(), regions()),
    text=prose,
)


@settings(max_examples=400, deadline=None)
@given(messages)
def test_valid_messages_round_trip(m):
    r = parse(m.format())
    assert r.ok, r.error
    assert r.message == m and r.text == m.text


def _random_case(draw, s: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(s), max_size=len(s)))
    return "".join(c.upper() if f else c.lower() for c, f in zip(s, flips))


space = st.sampled_from(["", " ", "  ", "\n", "\t", " \n "])


@st.composite
def variants(draw, m: HybridMessage):
    """`m` written as a model might: any tag case, spaces in and around tags and values,
    the module by letter or display name, region in percent when it is whole numbers."""

    def tag(name, closing=False):
        return "<" + draw(space) + ("/" + draw(space) if closing else "") + _random_case(draw, name) + draw(space) + ">"

    def field_(name, value):
        return draw(space) + tag(name) + draw(space) + value + draw(space) + tag(name, True) + draw(space)

    names = [m.module, m.module.replace("_", " ").title(), *DISPLAY_NAMES[m.module]]
    names += [k for k, v in MODULE_LETTERS.items() if v == m.module]
    parts = [field_("module", _random_case(draw, draw(st.sampled_from(names))))]
    gaps = st.sampled_from([" ", "  ", "\n"])
    parts += [field_("instruction", ins.replace(" ", draw(gaps))) for ins in m.instructions]
    if m.region is not None:
        x = [np.format_float_positional(v, unique=True, trim="0") for v in m.region]
        sep = draw(st.sampled_from([",", ", ", " , ", ",\n"]))
        opening, closing = draw(st.sampled_from(["(", "[", ""])), draw(st.sampled_from([")", "]", ""]))
        parts.append(field_("region", opening + sep.join(x) + closing))
    if draw(st.booleans()):
        parts.append("<sig_0><sig_1>")
    return m.text + draw(space) + "".join(parts)


@settings(max_examples=300, deadline=None)
@given(st.data(), messages)
def test_case_and_whitespace_variants_parse_the_same(data, m):
    text = data.draw(variants(m))
    r = parse(text)
    assert r.ok, (text, r.error)
    assert r.message == m


def test_constructor_normalises_and_validates():
    m = HybridMessage(module="Image Editing", instructions="  the   sky \n", region=[0, 0, 1, 1], text=" hi ")
    assert (m.module, m.instructions, m.region, m.text) == ("edit_image", ("the sky",), (0.0, 0.0, 1.0, 1.0), "hi")
    with pytest.raises(MessageError, match="at least one"):
        HybridMessage(module="B", instructions=())
    with pytest.raises(MessageError, match="contains a message tag"):
        HybridMessage(module="B", instructions=("a </instruction> b",))
    with pytest.raises(RegionError):
        HybridMessage(module="B", instructions=("a",), region=(0.5, 0, 0.2, 1))
    with pytest.raises(MessageError, match="unknown module"):
        HybridMessage(module="teleport", instructions=("a",))


def test_signal_buffer_and_dict():
    m = HybridMessage(module="segment_image", instructions=("dog",), region=(0.1, 0.2, 0.3, 0.4))
    sig = np.ones((4, 8), dtype=np.float32)
    ms = m.with_signal(sig)
    assert ms.signal is sig and ms == m  # the buffer is not part of equality
    assert m.to_dict() == {"module": "segment_image", "instructions": ["dog"], "region": [0.1, 0.2, 0.3, 0.4]}
    assert m.format() == (
        "<module>segment_image</module><instruction>dog</instruction><region>(0.1, 0.2, 0.3, 0.4)</region>"
    )


def test_find_signal_tokens():
    sig = (50, 51, 52)
    found = find_signal_tokens([7, 50, 9, 51, 52, 3], sig)
    assert found.complete and found.missing == () and found.indices().tolist() == [1, 3, 4]
    partial = find_signal_tokens(np.array([[50, 1, 52, 50]]), sig)  # last occurrence wins
    assert not partial.complete and partial.positions == (3, None, 2) and partial.missing == (1,)
    with pytest.raises(MessageError, match=r"\[1\]"):
        partial.indices()
    assert find_signal_tokens([], sig).missing == (0, 1, 2)


def test_signal_token_ids_from_the_manifest():
    info = TokenizerInfo(
        file=FileRef("tokenizer.json", "0" * 64, 1),
        signal_tokens=("<sig_0>", "<sig_1>"),
        special_token_ids={"<image>": 3, "<region>": 4, "<sig_0>": 5, "<sig_1>": 6},
    )
    assert signal_token_ids(info) == (5, 6)


def test_a_back_end_gets_the_messages_region_else_the_users_box():
    user = (0.1, 0.1, 0.5, 0.5)
    own = HybridMessage("segment_image", ("the red circle",), region=(0.2, 0.3, 0.6, 0.7))
    plain = HybridMessage("segment_image", ("the red circle",))
    assert back_end_region(own, user) == own.region
    assert back_end_region(plain, user) == user
    assert back_end_region(plain, None) is None and back_end_region(None, user) == user
