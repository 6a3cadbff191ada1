"""The mini Vitron's tokenizer: byte-level BPE trained on ShapesWorld's chat text.

    corpus: `corpus_samples` samples of every task mix, as chat text (`chat.sample_text`)
    ─► BPE over bytes (any text still encodes), digits split one by one (coordinates and
       counts are read digit by digit), `vocab_size - 6` entries including the specials
    ─► + the six message tags as single non-special tokens (`replies.MESSAGE_TAGS`)

Special tokens take the first ids, in this order: `<unk>`, `<s>`, `</s>` (the tiny
tokenizer's), then Vitron's `<image>`, `<region>`, `<sig_0>`..`<sig_{K-1}>` (the names of
`vitron_rt.models.tokenizer`), so `add_vitron_tokens` finds them in place. The message
tags are *not* special: the runtime's streaming decoder drops special tokens from the
reply text, and the parser must see the tags.

Deterministic: the corpus is a pure function of the world seed, and BPE training over a
fixed corpus is (a test trains twice and compares the files).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from vitron_rt.models.tokenizer import (
    TINY_BASE_SPECIALS,
    VICUNA_V1_SYSTEM,
    VICUNA_V1_TEMPLATE,
    PreparedTokenizer,
    add_vitron_tokens,
    vitron_special_tokens,
)
from vitron_rt.shapes.chat import BOS, EOS, sample_text
from vitron_rt.shapes.replies import MESSAGE_TAGS
from vitron_rt.shapes.tasks import MIXES, TaskGenerator
from vitron_rt.shapes.world import ShapesWorld

UNK = TINY_BASE_SPECIALS[0]
# Samples of each task in the corpus: every template and every word of the world shows
# up many times (the templates have <= 5 phrasings; 7 colours x 5 kinds x 9 places).
CORPUS_SAMPLES_PER_TASK = 150


def shapes_corpus(
    generator: TaskGenerator, video_frames: int, per_task: int = CORPUS_SAMPLES_PER_TASK
) -> Iterator[str]:
    """Chat text of `per_task` samples of every task in any mix, task by task, then the
    system prompt alone (so its words are merged even if a task mix changes)."""
    tasks = sorted({t for mix in MIXES.values() for t in mix})
    for task in tasks:
        for i in range(per_task):
            yield sample_text(generator.sample(task, i), video_frames)
    yield VICUNA_V1_SYSTEM


def train_tokenizer(corpus: Iterable[str], vocab_size: int, num_signal_tokens: int) -> PreparedTokenizer:
    """Byte-level BPE over `corpus` with exactly `vocab_size` entries (see the module docstring).

    Raises ValueError if the corpus is too small to reach `vocab_size` (the model's
    embedding has that many rows, so a smaller vocabulary would not match it).
    """
    specials = [*TINY_BASE_SPECIALS, *vitron_special_tokens(num_signal_tokens)]
    base = vocab_size - len(MESSAGE_TAGS)
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=base,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    if tok.get_vocab_size(with_added_tokens=True) != base:
        raise ValueError(
            f"the corpus yields {tok.get_vocab_size(with_added_tokens=True)} BPE entries, fewer than the "
            f"{base} asked for; use a larger corpus or a smaller vocab_size"
        )
    tok.add_tokens([AddedToken(t, special=False, normalized=False, single_word=False) for t in MESSAGE_TAGS])
    prepared = add_vitron_tokens(tok, num_signal_tokens, chat_template=VICUNA_V1_TEMPLATE, bos_token=BOS, eos_token=EOS)
    if prepared.vocab_size != vocab_size:
        raise AssertionError(f"tokenizer has {prepared.vocab_size} entries, expected {vocab_size}")
    return prepared


def shapes_tokenizer(
    vocab_size: int,
    num_signal_tokens: int,
    video_frames: int,
    seed: int = 0,
    per_task: int = CORPUS_SAMPLES_PER_TASK,
) -> PreparedTokenizer:
    """The tokenizer trained on the corpus of `ShapesWorld(seed=seed)`, for a model with
    `num_signal_tokens` signal tokens that samples `video_frames` frames of a video."""
    generator = TaskGenerator(ShapesWorld(seed=seed), num_signal_tokens=num_signal_tokens)
    return train_tokenizer(shapes_corpus(generator, video_frames, per_task), vocab_size, num_signal_tokens)

