"""The bundle's tokenizer at serving time: `tokenizers` + the chat template, no transformers.

Prompts are built the way transformers' `apply_chat_template(..., tokenize=True)` builds
them, so a bundle answers the prompts its model was tuned on:

    messages ──► Jinja (sandboxed; trim_blocks, lstrip_blocks; raise_exception,
                 bos_token, eos_token) ──► text ──► encode(add_special_tokens=False)

The template writes every special token it wants (the Vicuna v1 template starts with
`{{ bos_token }}`; SmolLM2's writes `<|im_start|>` itself), so nothing is added again
on encoding: no double BOS. A bundle without a template takes raw text, encoded with the
tokenizer's own post-processor (`add_special_tokens=True`), as `tokenizer(text)` would.

`StreamDecoder` turns the generated ids into text deltas for streaming. Byte-level BPE
splits a multi-byte character over several tokens; a delta is held back while the
decoded tail is an incomplete character, so a stream never shows half a character and
the deltas concatenate to the full decode.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

import jinja2
import jinja2.ext
import jinja2.nodes
import tokenizers
from jinja2.sandbox import ImmutableSandboxedEnvironment

from vitron_rt.bundle import Bundle, BundleError
from vitron_rt.runtime.errors import MessageError

_REPLACEMENT = "\ufffd"  # what a decoder yields for an incomplete UTF-8 sequence


# --------------------------------------------------------------------------- chat templates


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (transformers' assistant-mask marker) as a
    plain block, so templates that use it compile and render the same text."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Like transformers: json.dumps, without Jinja's HTML escaping.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def compile_chat_template(source: str) -> jinja2.Template:
    """Compile a chat template in the sandbox transformers uses (templates in bundles come
    from model repositories: untrusted code). `BundleError` on a syntax error."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise BundleError(f"chat template: syntax error on line {e.lineno}: {e.message}") from None


def _check_messages(messages: Sequence[Mapping]) -> list[dict]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise MessageError("a conversation must be a non-empty list of {role, content} messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise MessageError(f"message {i} must be a mapping with 'role' and 'content', got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not role:
            raise MessageError(f"message {i} needs a 'role' (user, assistant, system)")
        if not isinstance(content, str):
            raise MessageError(f"message {i} ({role}) needs text 'content', got {type(content).__name__}")
        out.append(dict(m))
    return out


# --------------------------------------------------------------------------- the tokenizer


class Tokenizer:
    """A `tokenizers.Tokenizer` with the bundle's chat template and named special tokens.

    `chat_template` None means raw-text prompts. Truncation and padding stored in the
    tokenizer file are switched off: prompts are never cut silently (the generator
    checks the context length and says so).
    """

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        chat_template: str | None = None,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        special_token_ids: Mapping[str, int] | None = None,
    ):
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self.backend = tokenizer
        self.chat_template = chat_template
        self._template = compile_chat_template(chat_template) if chat_template is not None else None
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.special_token_ids = dict(special_token_ids or {})

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> "Tokenizer":
        """The tokenizer a bundle ships (`tokenizer.json` and its chat template)."""
        info = bundle.manifest.tokenizer
        if info is None:
            raise BundleError(f"{bundle.root}: the bundle has no tokenizer")
        template = None
        if info.chat_template is not None:
            template = bundle.path(info.chat_template).read_text(encoding="utf-8")
        return cls(
            _load_tokenizer(bundle.path(info.file)),
            template,
            bos_token=info.bos_token,
            eos_token=info.eos_token,
            special_token_ids=info.special_token_ids,
        )

    @classmethod
    def from_files(
        cls,
        tokenizer_json: str | os.PathLike,
        chat_template: str | os.PathLike | None = None,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
    ) -> "Tokenizer":
        """From a tokenizer.json and, optionally, a chat template file."""
        template = Path(chat_template).read_text(encoding="utf-8") if chat_template is not None else None
        return cls(_load_tokenizer(Path(tokenizer_json)), template, bos_token=bos_token, eos_token=eos_token)

    # -- vocabulary

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def has_chat_template(self) -> bool:
        return self._template is not None

    def token_id(self, token: str) -> int:
        """The id of a token; `KeyError` naming it when the vocabulary lacks it."""
        tid = self.special_token_ids.get(token)
        if tid is None:
            tid = self.backend.token_to_id(token)
        if tid is None:
            raise KeyError(f"token {token!r} is not in the tokenizer")
        return tid

    @property
    def bos_token_id(self) -> int | None:
        return None if self.bos_token is None else self.token_id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return None if self.eos_token is None else self.token_id(self.eos_token)

    # -- text <-> ids

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Ids of `text`; `add_special_tokens` runs the tokenizer's post-processor (e.g. a
        LLaMA tokenizer's BOS), as transformers' `tokenizer(text)` does by default."""
        if not isinstance(text, str):
            raise MessageError(f"expected text to encode, got {type(text).__name__}")
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(map(int, ids)), skip_special_tokens=skip_special_tokens)

    # -- prompts

    def render_chat(self, messages: Sequence[Mapping], add_generation_prompt: bool = True) -> str:
        """The conversation rendered by the chat template (transformers' `tokenize=False`).

        Without a template (raw-text mode) the prompt is the messages' contents joined by
        newlines: one user message is taken exactly as written. A template that refuses
        the conversation (`raise_exception`, e.g. roles not alternating) raises
        `MessageError` with its reason.
        """
        msgs = _check_messages(messages)
        if self._template is None:
            return "\n".join(m["content"] for m in msgs)
        try:
            return self._template.render(
                messages=msgs,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                tools=None,
                documents=None,
            )
        except jinja2.TemplateError as e:
            raise MessageError(f"the chat template refused the conversation: {e}") from None

    def apply_chat_template(self, messages: Sequence[Mapping], add_generation_prompt: bool = True) -> list[int]:
        """Prompt ids for a conversation, equal to transformers'
        `apply_chat_template(messages, add_generation_prompt=..., tokenize=True)`.

        With a template: the rendered text, encoded without adding special tokens (the
        template wrote them). Raw-text mode: `render_chat`'s text, encoded with them.
        """
        text = self.render_chat(messages, add_generation_prompt)
        return self.encode(text, add_special_tokens=self._template is None)

    def stream_decoder(self, skip_special_tokens: bool = True) -> "StreamDecoder":
        return StreamDecoder(self.backend, skip_special_tokens=skip_special_tokens)


def _load_tokenizer(path: Path) -> tokenizers.Tokenizer:
    try:
        return tokenizers.Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on a malformed file
        raise BundleError(f"{path}: not a readable tokenizer.json ({e})") from None


# --------------------------------------------------------------------------- streaming


class StreamDecoder:
    """Incremental detokenisation: `step(id)` returns the text the new token adds.

    It decodes a short window (the last emitted token or so plus the pending ones) and
    returns what the window's text gained; decoders that depend on context (a leading
    space stripped from the first token, byte fallback) see the same context as in a
    full decode. While the window's text ends in U+FFFD (an incomplete UTF-8 sequence),
    the token is held and "" returned. `flush()` returns whatever is still held at the
    end (a genuinely invalid byte sequence then shows as U+FFFD, as the full decode has
    it). The deltas, then `flush()`, concatenate to `decode(all ids)`.
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer, skip_special_tokens: bool = True):
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self.ids: list[int] = []
        self._prefix = 0  # window start: the token before the first unemitted one
        self._read = 0  # first unemitted token

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=self._skip) if ids else ""

    def step(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith(_REPLACEMENT):
            self._prefix, self._read = self._read, len(self.ids)
            return new_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """The held text, at the end of generation."""
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        self._prefix, self._read = self._read, len(self.ids)
        return new_text[len(prefix_text) :]
