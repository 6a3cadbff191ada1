"""Tokenizer preparation: Vitron's special tokens are single ids, the byte-level tiny
tokenizer round-trips any text, and the Vicuna v1 template renders LLaVA's conv_vicuna_v1."""

import jinja2
from hypothesis import given, settings
from hypothesis import strategies as st

from vitron_rt.models.config import preset
from vitron_rt.models.tokenizer import (
    VICUNA_V1_SYSTEM,
    VICUNA_V1_TEMPLATE,
    add_vitron_tokens,
    tiny_tokenizer,
    vitron_special_tokens,
)


def test_tiny_tokenizer_matches_preset_vocab():
    cfg = preset("tiny")
    tok = tiny_tokenizer(cfg.signal.num_tokens)
    assert tok.vocab_size == cfg.llm.vocab_size
    assert tok.special_tokens == ["<image>", "<region>", "<sig_0>", "<sig_1>"]


def test_special_tokens_are_single_ids():
    tok = tiny_tokenizer(3)
    ids = tok.tokenizer.encode("look<image>here <region><sig_2>", add_special_tokens=False).ids
    for t in vitron_special_tokens(3):
        if t in ("<image>", "<region>", "<sig_2>"):
            assert tok.token_id(t) in ids


def test_adding_tokens_twice_keeps_ids():
    tok = tiny_tokenizer(2)
    before = {t: tok.token_id(t) for t in tok.special_tokens}
    again = add_vitron_tokens(tok.tokenizer, 2, chat_template=None, bos_token="<s>", eos_token="</s>")
    assert {t: again.token_id(t) for t in again.special_tokens} == before
    assert again.vocab_size == tok.vocab_size


@settings(max_examples=60, deadline=None)
@given(st.text())
def test_byte_level_round_trip(text):
    tok = tiny_tokenizer(2).tokenizer
    assert tok.decode(tok.encode(text, add_special_tokens=False).ids, skip_special_tokens=False) == text


def render(messages, add_generation_prompt=True):
    return (
        jinja2.Environment()
        .from_string(VICUNA_V1_TEMPLATE)
        .render(messages=messages, bos_token="<s>", eos_token="</s>", add_generation_prompt=add_generation_prompt)
    )


def test_vicuna_v1_template_is_llava_conv_vicuna_v1():
    # LLaVA's conv_vicuna_v1.get_prompt(): system + " " + "USER: q" + " " + "ASSISTANT: a" + "</s>" ...
    msgs = [
        {"role": "user", "content": "<image>\nWhat is this?"},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "Segment it."},
    ]
    expected = (
        "<s>" + VICUNA_V1_SYSTEM + " USER: <image>\nWhat is this? ASSISTANT: A cat.</s>USER: Segment it. ASSISTANT:"
    )
    assert render(msgs) == expected


def test_vicuna_v1_template_takes_a_system_message():
    out = render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert out == "<s>Be brief. USER: Hi ASSISTANT:"
