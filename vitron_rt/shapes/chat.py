"""A sample as the model sees it: the chat text the runtime would prefill, and the reply.

Training must show the model exactly the text the runtime builds at serving time:

    user text = "<image>" x N + "\\n" + prompt        (N: 1 per image, one per sampled frame;
                                                      `runtime.prefill.with_image_tokens`)
              + " <region>" unless placed inline      (`runtime.prefill.with_region_token`)
    prompt    = chat template (add_generation_prompt)  "<s>{system} USER: {user} ASSISTANT:"
    reply     = " " + answer + eos                   what the template writes after it

The rules are restated here rather than imported, so this package (and whatever ships
its tokenizer) depends on no runtime module; tests keep the two equal, as the runtime
keeps its MODULES equal to the models'. The template is rendered with the runtime's
Jinja settings (trim_blocks, lstrip_blocks), and `prompt + reply` is the template's
rendering of the whole exchange, so the tokens the model is trained to emit are the
tokens the runtime's generator sees it emit.
"""

from __future__ import annotations

from jinja2.sandbox import ImmutableSandboxedEnvironment

from vitron_rt.models.tokenizer import IMAGE_TOKEN, REGION_TOKEN, VICUNA_V1_TEMPLATE
from vitron_rt.shapes.tasks import Sample

BOS, EOS = "<s>", "</s>"
_TEMPLATE = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(VICUNA_V1_TEMPLATE)


def num_media_tokens(sample: Sample, video_frames: int) -> int:
    """How many <image> placeholders the sample's user turn gets: 1 per image, one per
    sampled frame of a video, none without media."""
    return {"image": 1, "video": video_frames, "none": 0}[sample.media]


def user_content(sample: Sample, video_frames: int) -> str:
    """The user turn with its placeholders, as `Conversation.run` writes it. Prompts of
    ShapesWorld never hold an image placeholder and hold at most one region placeholder."""
    text = sample.prompt
    if IMAGE_TOKEN in text or text.count(REGION_TOKEN) > 1:
        raise ValueError(f"a {sample.task} prompt holds placeholders it should not: {text!r}")
    n = num_media_tokens(sample, video_frames)
    if n:
        text = IMAGE_TOKEN * n + "\n" + text
    if sample.region is not None and REGION_TOKEN not in text:
        text = f"{text} {REGION_TOKEN}"
    return text


def render_prompt(user: str) -> str:
    """The text the runtime prefills for one user turn (Vicuna v1, default system prompt)."""
    return _TEMPLATE.render(
        messages=[{"role": "user", "content": user}], add_generation_prompt=True, bos_token=BOS, eos_token=EOS
    )


def render_conversation(user: str, answer: str) -> str:
    """The template's text of the whole exchange (what `render_prompt + reply_text` equals)."""
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return _TEMPLATE.render(messages=messages, add_generation_prompt=False, bos_token=BOS, eos_token=EOS)


def render_follow_up(user: str) -> str:
    """The text of a further user turn, after a reply: what the template writes between
    that reply's end-of-sequence token and the next reply."""
    return f"USER: {user} ASSISTANT:"


def reply_text(answer: str) -> str:
    """What follows the prompt: the space the template puts after "ASSISTANT:", the
    answer, and the end-of-sequence token that stops generation."""
    return f" {answer}{EOS}"


def sample_text(sample: Sample, video_frames: int) -> str:
    """Prompt and reply of a sample (and its follow-up turns) as one string (the
    tokenizer's training corpus)."""
    text = render_prompt(user_content(sample, video_frames)) + reply_text(sample.answer)
    return text + "".join(render_follow_up(u) + reply_text(a) for u, a in sample.turns)
