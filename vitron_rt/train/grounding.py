"""Grounding: the LLM taught to find the shape a question is about and to carry what it is.

A question about one shape among several ("What colour is the triangle?"; an existence
question answered "yes", "Is there a red circle?", is about the shape it names) is
answered by the position before the answer, which must find the triangle's patches among
the image's 64 rows and read them. A 4-layer LLM trained from scratch learns that selection slowly
(see the README: with perfect patches it still picked one shape of several barely above
chance after hundreds of steps). ShapesWorld knows where every shape is, so a stage can
say it (a `ground` loss weight; `stages.Stage.ground_*` pick the heads): one head, at the
position that predicts the answer, is pulled towards the shape's patches, each weighted by
how much of it the shape covers, and another from the last token of the words that name
the shape (`data.collate(ground=True)`). The cross entropy of a head's attention with the
target is the `ground` loss; the LM loss still decides what is read there.

A question is answered in two hops: the words naming the shape find its patches (role 1),
then the position that predicts the answer reads those words (role 2: a third head, pulled
to the words' last token, or to the <region> token of a question about a box; each signal
token of a segmentation or edit reads its request's words the same way). Measured, the
attention of both hops forms within a few hundred steps, yet the answer barely improved: a
linear probe read the asked shape's colour off the words' state after layer 1 on 81 % of
held-out questions, and off the answer's state after the reading layer on 64 %, no better
than before it (85 % and 76 % with the objective below). The hop's attention was right but
its values did not carry the shape. So `ground_words` asks the states themselves: the
residual stream after the layer of each grounded role's head, at its query, read by the
LLM's final norm and tied output head (a logit lens), predicts the words of the shape (its
colour, kind and place; the projector's word objective, `perception.words_loss`). The
shipped recipe uses `ground_words` on roles 1 and 2, not the attention loss: measured in
`stages` and the README.

Nothing changes at serving time: the head is one of the LLM's own, exported as it is; the
loss only shapes what it learns. The attention is recomputed for the grounded queries alone
from the layer's input (captured by a hook, so the decoder runs its own fast attention):
its q and k projections, the rotary embedding, the causal and padding mask, a softmax.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def capture_attention_input(llm: nn.Module, layer: int) -> Iterator[dict]:
    """While open, the returned dict holds `hidden` (B, T, D) and `cos`, `sin` (B, T, d)
    of the last call of decoder layer `layer`'s self-attention of `llm` (a transformers
    LlamaForCausalLM)."""
    attn = llm.model.layers[layer].self_attn
    seen: dict = {}

    def hook(module, args, kwargs):
        seen["hidden"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        seen["cos"], seen["sin"] = kwargs["position_embeddings"]

    handle = attn.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


@contextmanager
def capture_layer_output(llm: nn.Module, layer: int) -> Iterator[dict]:
    """While open, the returned dict holds `hidden` (B, T, D): the residual stream after
    decoder layer `layer` of `llm` (a transformers LlamaForCausalLM) in its last call."""
    seen: dict = {}

    def hook(module, args, output):
        seen["hidden"] = output[0] if isinstance(output, tuple) else output

    handle = llm.model.layers[layer].register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def head_attention(
    attn: nn.Module,
    seen: dict,
    head: int,
    rows: torch.Tensor,
    queries: torch.Tensor,
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """Attention probabilities (G, T) of `head` of LlamaAttention `attn` at (rows, queries),
    from the captured layer input `seen` (`capture_attention_input`); keys after the query
    or padded (`attention_mask` (B, T) 0) get none."""
    hidden, cos, sin = seen["hidden"], seen["cos"], seen["sin"]
    d = attn.head_dim
    group = attn.config.num_attention_heads // attn.config.num_key_value_heads
    kv = head // group
    h = hidden[rows]  # (G, T, D)
    q = nn.functional.linear(h[torch.arange(len(rows)), queries], attn.q_proj.weight[head * d : (head + 1) * d])
    if attn.q_proj.bias is not None:
        q = q + attn.q_proj.bias[head * d : (head + 1) * d]
    k = nn.functional.linear(h, attn.k_proj.weight[kv * d : (kv + 1) * d])  # (G, T, d)
    if attn.k_proj.bias is not None:
        k = k + attn.k_proj.bias[kv * d : (kv + 1) * d]
    c, s = cos[rows], sin[rows]  # (G, T, d)
    cq, sq = c[torch.arange(len(rows)), queries], s[torch.arange(len(rows)), queries]  # (G, d)
    q = q * cq + _rotate_half(q) * sq
    k = k * c + _rotate_half(k) * s
    scores = torch.matmul(k, q[..., None])[..., 0] * attn.scaling  # (G, T)
    t = torch.arange(hidden.shape[1], device=hidden.device)
    allowed = (t[None] <= queries[:, None]) & attention_mask[rows].bool()
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1)


def grounding_loss(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross entropy of attention probabilities (G, T) with target distributions (G, T)."""
    return -(targets * probs.clamp_min(1e-9).log()).sum(-1).mean()
