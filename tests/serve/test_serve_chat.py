"""The done-when of the serving issue on a real chat model: `vitron-rt serve` (the CLI,
in a subprocess) on SmolLM2-135M-Instruct, and the official openai client asking it for
the capital of France, streamed and not."""

from __future__ import annotations

import openai
import pytest
from _serve_helpers import cli_server, client, png_data_url, random_image

MODEL = "smollm2"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smol_url(smollm2_bundle, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with cli_server(smollm2_bundle, "--model-name", MODEL, "--queue-depth", "2", log=log) as srv:
        yield srv.url


def test_paris_non_streamed_and_streamed(smol_url):
    c = client(smol_url)
    assert [m.id for m in c.models.list().data] == [MODEL]

    reply = c.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=32, temperature=0)
    text = reply.choices[0].message.content
    assert "Paris" in text
    assert reply.object == "chat.completion" and reply.model == MODEL
    assert reply.choices[0].finish_reason == "stop"
    usage = reply.usage
    assert usage.prompt_tokens > 5 and 1 <= usage.completion_tokens <= 32
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert getattr(reply, "vitron", None) is None  # plain prose: no hybrid message

    chunks = list(
        c.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            max_tokens=32,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert {ch.object for ch in chunks} == {"chat.completion.chunk"} and len({ch.id for ch in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content]
    assert len(deltas) >= 2, "the reply should arrive in pieces"
    assert "".join(deltas) == text  # greedy: the same words, streamed
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finish == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == usage.completion_tokens


def test_history_and_wrong_model(smol_url):
    c = client(smol_url)
    reply = c.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You answer in one short sentence."},
            *QUESTION,
            {"role": "assistant", "content": "The capital of France is Paris."},
            {"role": "user", "content": "And what river runs through it?"},
        ],
        max_tokens=24,
        temperature=0,
    )
    # The whole history was pre-filled: more prompt tokens than the question alone.
    assert reply.usage.prompt_tokens > 40
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="gpt-4o", messages=QUESTION, max_tokens=4)
    assert e.value.body["code"] == "model_not_found"


def test_text_only_model_refuses_an_image(smol_url):
    c = client(smol_url)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": png_data_url(random_image())}},
            ]}],
            max_tokens=4,
        )
    assert "no vision encoder" in e.value.body["message"]
