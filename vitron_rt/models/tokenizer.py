"""Tokenizer preparation: Vitron's special tokens and chat templates.

The product of this module is what a bundle ships: a `tokenizers` JSON file (with
`<image>`, `<region>` and `<sig_0>`..`<sig_{K-1}>` added as special tokens) and the chat
template as Jinja text. The runtime reads both back without torch or transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

IMAGE_TOKEN = "<image>"
REGION_TOKEN = "<region>"


def signal_tokens(num: int) -> list[str]:
    """`<sig_0>`..`<sig_{num-1}>`: the K signal tokens shared by every module."""
    return [f"<sig_{i}>" for i in range(num)]


def vitron_special_tokens(num_signal_tokens: int) -> list[str]:
    return [IMAGE_TOKEN, REGION_TOKEN, *signal_tokens(num_signal_tokens)]


# llava_v1 / Vicuna v1.1 conversation: "{system} USER: {q} ASSISTANT: {a}</s>USER: ..."
# (LLaVA's conv_vicuna_v1: sep=" ", sep2="</s>"). BOS is part of the template, so the
# runtime tokenises a rendered template without adding special tokens again.
VICUNA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
VICUNA_V1_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set msgs = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system = '" + VICUNA_V1_SYSTEM.replace("'", "\\'") + "' -%}{%- set msgs = messages -%}"
    "{%- endif -%}"
    "{{- system ~ ' ' -}}"
    "{%- for m in msgs -%}"
    "{%- if m['role'] == 'user' -%}{{- 'USER: ' ~ m['content'] ~ ' ' -}}"
    "{%- else -%}{{- 'ASSISTANT: ' ~ m['content'] ~ eos_token -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)
CHAT_TEMPLATES = {"vicuna_v1": VICUNA_V1_TEMPLATE}

# The tiny preset's tokenizer: byte-level, no merges, so it needs no training data and
# encodes any text. <unk>, <s>, </s>, then the 256 byte symbols.
TINY_BASE_SPECIALS = ("<unk>", "<s>", "</s>")
TINY_BASE_VOCAB = len(TINY_BASE_SPECIALS) + 256


@dataclass
class PreparedTokenizer:
    """What a bundle ships: the tokenizer, its chat template (or None), and named ids."""

    tokenizer: Tokenizer
    chat_template: str | None
    bos_token: str | None
    eos_token: str | None
    special_tokens: list[str]

    def token_id(self, token: str) -> int:
        tid = self.tokenizer.token_to_id(token)
        if tid is None:
            raise KeyError(f"token {token!r} is not in the tokenizer")
        return tid

    @property
    def vocab_size(self) -> int:
        """Rows the embedding needs: one past the largest id (added tokens included)."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)


def byte_level_tokenizer() -> Tokenizer:
    """The tiny preset's base tokenizer, before Vitron's tokens: byte-level, no merges, so
    it needs no training data and encodes any text. <unk>, <s>, </s>, then 256 bytes."""
    vocab = {tok: i for i, tok in enumerate(TINY_BASE_SPECIALS)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in TINY_BASE_SPECIALS])
    return tok


def tiny_tokenizer(num_signal_tokens: int) -> PreparedTokenizer:
    """A byte-level tokenizer for the tiny preset, with Vitron's special tokens added."""
    return add_vitron_tokens(
        byte_level_tokenizer(), num_signal_tokens, chat_template=VICUNA_V1_TEMPLATE, bos_token="<s>", eos_token="</s>"
    )


def add_vitron_tokens(
    tok: Tokenizer,
    num_signal_tokens: int,
    chat_template: str | None,
    bos_token: str | None,
    eos_token: str | None,
) -> PreparedTokenizer:
    """Add `<image>`, `<region>` and the signal tokens as special tokens (idempotent).

    Tokens already present keep their ids, so a Vitron checkpoint whose embedding
    already has rows for them lines up; new ones take the next free ids.
    """
    specials = vitron_special_tokens(num_signal_tokens)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return PreparedTokenizer(
        tokenizer=tok,
        chat_template=chat_template,
        bos_token=bos_token,
        eos_token=eos_token,
        special_tokens=specials,
    )


def from_transformers(hf_tokenizer, num_signal_tokens: int, chat_template: str | None = None) -> PreparedTokenizer:
    """Prepare a transformers fast tokenizer (from an HF folder or a GGUF file).

    `chat_template` overrides the tokenizer's own one (e.g. "vicuna_v1" for Vitron); with
    neither, the bundle has no template and the runtime takes prompts as raw text.
    """
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(
            f"{type(hf_tokenizer).__name__} has no fast (tokenizers) backend; "
            "vitron-rt ships tokenizer.json and needs a fast tokenizer"
        )
    tok = Tokenizer.from_str(backend.to_str())
    template = CHAT_TEMPLATES.get(chat_template, chat_template) if chat_template else hf_tokenizer.chat_template
    if isinstance(template, dict):  # several named templates: take the default one
        template = template.get("default") or next(iter(template.values()))
    return add_vitron_tokens(
        tok,
        num_signal_tokens,
        chat_template=template,
        bos_token=hf_tokenizer.bos_token,
        eos_token=hf_tokenizer.eos_token,
    )
