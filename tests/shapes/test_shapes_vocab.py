"""The mini tokenizer and the chat text: trained deterministically to exactly the mini
preset's vocabulary, Vitron's special tokens first, the message tags single non-special
tokens, and a reply decoded the way the runtime streams it still parses."""

import pytest

from vitron_rt.models.config import preset
from vitron_rt.models.tokenizer import (
    IMAGE_TOKEN,
    REGION_TOKEN,
    TINY_BASE_SPECIALS,
    VICUNA_V1_TEMPLATE,
    vitron_special_tokens,
)
from vitron_rt.runtime.messages import parse
from vitron_rt.runtime.prefill import with_image_tokens, with_region_token
from vitron_rt.runtime.tokenizer import compile_chat_template
from vitron_rt.shapes import ShapesWorld
from vitron_rt.shapes.chat import (
    render_conversation,
    render_follow_up,
    render_prompt,
    reply_text,
    sample_text,
    user_content,
)
from vitron_rt.shapes.replies import MESSAGE_TAGS
from vitron_rt.shapes.tasks import TASKS, TaskGenerator
from vitron_rt.shapes.vocab import shapes_corpus, shapes_tokenizer, train_tokenizer

MINI = preset("mini")
K, FRAMES = MINI.signal.num_tokens, MINI.video_frames


@pytest.fixture(scope="module")
def mini_tokenizer():
    return shapes_tokenizer(MINI.llm.vocab_size, K, FRAMES)


@pytest.fixture(scope="module")
def held_out():
    gen = TaskGenerator(ShapesWorld(seed=99), num_signal_tokens=K)
    return [gen.sample(task, i) for task in sorted(TASKS) for i in range(5)]


def test_chat_text_is_the_runtimes():
    """The package restates the runtime's placeholder rules and renders its template with
    the runtime's Jinja settings; both must give the runtime's text."""
    runtime_template = compile_chat_template(VICUNA_V1_TEMPLATE)
    gen = TaskGenerator(ShapesWorld(seed=0), num_signal_tokens=K)
    cases = [gen.sample(task, i) for task in ("qa_colour", "seg_video", "gen_image") for i in range(3)]
    cases += [gen.sample(task, i) for task in ("region_what", "region_colour", "seg_image_region") for i in range(6)]
    assert any(REGION_TOKEN in s.prompt for s in cases) and any(s.region and REGION_TOKEN not in s.prompt for s in cases)
    for s in cases:
        n = {"image": 1, "video": FRAMES, "none": 0}[s.media]
        expected = with_image_tokens(s.prompt, n, IMAGE_TOKEN) if n else s.prompt
        if s.region is not None:
            expected = with_region_token(expected, REGION_TOKEN)
        user = user_content(s, FRAMES)
        assert user == expected
        messages = [{"role": "user", "content": user}]
        kw = dict(bos_token="<s>", eos_token="</s>", tools=None, documents=None)
        assert render_prompt(user) == runtime_template.render(messages=messages, add_generation_prompt=True, **kw)
        assert render_prompt(user).startswith("<s>A chat between")
        assert render_prompt(user).endswith(f"USER: {user} ASSISTANT:")
        assert render_prompt(user) + reply_text(s.answer) == render_conversation(user, s.answer)
    # A follow-up turn (training's multi-turn samples) continues the template's text too.
    follow = [("What colour is the circle?", "red"), ("Where is the circle?", "top left")]
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": s.answer}]
    text = render_prompt(user) + reply_text(s.answer)
    for question, answer in follow:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        text += render_follow_up(question) + reply_text(answer)
    assert text == runtime_template.render(messages=messages, add_generation_prompt=False, **kw)


def test_the_mini_tokenizer_has_the_presets_size_and_vitrons_tokens(mini_tokenizer):
    tok = mini_tokenizer
    assert tok.vocab_size == MINI.llm.vocab_size
    specials = [*TINY_BASE_SPECIALS, *vitron_special_tokens(K)]
    assert [tok.token_id(t) for t in specials] == list(range(len(specials)))
    assert tok.special_tokens == vitron_special_tokens(K)
    assert (tok.token_id(tok.bos_token), tok.token_id(tok.eos_token)) == (MINI.llm.bos_token_id, MINI.llm.eos_token_id)
    added = {t.content: t for t in tok.tokenizer.get_added_tokens_decoder().values()}
    for tag in MESSAGE_TAGS:
        assert tok.tokenizer.encode(tag, add_special_tokens=False).ids == [tok.token_id(tag)]
        assert not added[tag].special  # the runtime's streaming decoder keeps them
    for t in specials:
        assert added[t].special


def test_held_out_text_round_trips_and_words_are_whole(mini_tokenizer, held_out):
    tok = mini_tokenizer.tokenizer
    for s in held_out:
        text = sample_text(s, FRAMES)
        ids = tok.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids, skip_special_tokens=False) == text
    # The world's words are single tokens, digits one by one.
    for word in ("circle", "purple", "triangle", "diamond", "bottom", "shape", "moves"):
        assert len(tok.encode(" " + word, add_special_tokens=False).ids) == 1, word
    assert tok.encode("0.25", add_special_tokens=False).tokens == ["0", ".", "2", "5"]


def test_a_streamed_reply_still_parses(mini_tokenizer, held_out):
    """The runtime decodes generated ids with skip_special_tokens=True: signal tokens vanish
    from the text, the tags must not."""
    tok = mini_tokenizer.tokenizer
    for s in held_out:
        ids = tok.encode(" " + s.answer, add_special_tokens=False).ids
        streamed = tok.decode(ids, skip_special_tokens=True)
        parsed, direct = parse(streamed), parse(s.answer)
        assert parsed.ok and parsed.message == direct.message, streamed
    # Why the tags are capitalised: the lower-case region tag IS the region placeholder,
    # a special token the stream drops, and the message no longer parses.
    lower = " Here. <module>segment_image</module><instruction>x</instruction><region>(0.10, 0.20, 0.30, 0.40)</region>"
    assert tok.encode(lower, add_special_tokens=False).ids.count(mini_tokenizer.token_id(REGION_TOKEN)) == 1
    assert not parse(tok.decode(tok.encode(lower, add_special_tokens=False).ids, skip_special_tokens=True)).ok


def test_training_is_deterministic_and_sized_exactly():
    gen = TaskGenerator(ShapesWorld(seed=0), num_signal_tokens=2)
    corpus = list(shapes_corpus(gen, FRAMES, per_task=15))
    a = train_tokenizer(corpus, 400, 2)
    b = train_tokenizer(list(corpus), 400, 2)
    assert a.tokenizer.to_str() == b.tokenizer.to_str()
    assert a.vocab_size == 400
    with pytest.raises(ValueError, match="fewer than"):
        train_tokenizer(corpus[:20], 5000, 2)
