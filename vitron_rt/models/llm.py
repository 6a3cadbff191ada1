"""The LLM as export sees it: embeddings in, logits + last hidden states + KV cache out.

`LlmDecoder` wraps a transformers `LlamaForCausalLM` (kept in `self.model`, so weights,
config and `generate()` stay the library's) behind a flat, tensor-only signature that
`torch.onnx.export(dynamo=True)` can trace and the runtime can bind by name:

    inputs_embeds (B,T,D) ─┐
    attention_mask (B,P+T) ├─► LlamaModel (DynamicCache seeded with the past) ─► norm ─► hidden (B,T,D)
    position_ids (B,T)     │                                             └► lm_head ─► logits (B,T,V)
    past k_i, v_i          ┘   present k_i, v_i (B,H_kv,P+T,hd) = past ++ this step's keys / values

Token embedding is a separate component (`EmbedTokens`) because the runtime splices
image / region embeddings into the sequence between embedding and decoding. The same
graph serves prefill (P = 0, T = prompt) and decode (P > 0, T = 1).

`greedy_generate` drives the wrapper the way the runtime drives the exported graph
(explicit KV tensors, prefill then one token per step); it is the torch oracle that
runtime generation is compared against.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vitron_rt.models.config import LlmConfig

# I/O names of the exported decoder; the manifest records them and the runtime reads
# them from there. KV names follow onnxruntime-genai's `past_key_values.%d.key` scheme.
INPUT_NAMES: tuple[str, ...] = ("inputs_embeds", "attention_mask", "position_ids")
OUTPUT_NAMES: tuple[str, ...] = ("logits", "hidden_states")
_KV_PATTERNS = {"past": "past_key_values.{i}.{kind}", "present": "present.{i}.{kind}"}


class LlmDecoder(nn.Module):
    """A LLaMA-family causal LM with an explicit, flat KV-cache signature (see module docstring).

    Covers what transformers' `LlamaForCausalLM` covers: GQA (num_kv_heads < num_heads),
    tied or untied LM head, and RoPE scaling whose frequencies are fixed at init (tested:
    linear, llama3). "dynamic" NTK scaling, which recomputes them from the sequence length
    at run time, runs in torch but has not been export-checked.
    """

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        from transformers import LlamaForCausalLM

        if not isinstance(hf_model, LlamaForCausalLM):
            raise TypeError(f"LlmDecoder wraps a transformers LlamaForCausalLM, got {type(hf_model).__name__}")
        self.model = hf_model.eval()

    @classmethod
    def from_config(cls, cfg: LlmConfig) -> "LlmDecoder":
        """Random weights from `cfg` (the caller seeds torch; honours a `torch.device` context)."""
        from transformers import LlamaForCausalLM

        return cls(LlamaForCausalLM(cfg.to_hf()))

    # -- shape facts the export spec and the runtime need ---------------------------------

    @property
    def config(self):
        """The wrapped model's transformers config."""
        return self.model.config

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def num_heads(self) -> int:
        return self.model.config.num_attention_heads

    @property
    def num_kv_heads(self) -> int:
        cfg = self.model.config
        return getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads

    @property
    def head_dim(self) -> int:
        cfg = self.model.config
        # Some checkpoints set head_dim explicitly (it need not be hidden_size / heads).
        return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def vocab_size(self) -> int:
        """Rows of the LM head (== embedding rows), i.e. the logits' last dimension."""
        return self.model.get_output_embeddings().weight.shape[0]

    def input_embeddings(self) -> nn.Embedding:
        """The token embedding table (shared with `EmbedTokens`, and with the head when tied)."""
        return self.model.get_input_embeddings()

    # -- I/O names ------------------------------------------------------------------------

    def kv_names(self, kind: str = "past") -> list[str]:
        """Flat KV names in forward order: `past_key_values.0.key, past_key_values.0.value, ...`
        for `kind="past"`, `present.0.key, ...` for `kind="present"`."""
        if kind not in _KV_PATTERNS:
            raise ValueError(f"kind must be one of {sorted(_KV_PATTERNS)}, got {kind!r}")
        pattern = _KV_PATTERNS[kind]
        return [pattern.format(i=i, kind=k) for i in range(self.num_layers) for k in ("key", "value")]

    def input_names(self) -> list[str]:
        """Forward's positional inputs, by name, in order."""
        return [*INPUT_NAMES, *self.kv_names("past")]

    def output_names(self) -> list[str]:
        """Forward's outputs, by name, in order."""
        return [*OUTPUT_NAMES, *self.kv_names("present")]

    def dummy_inputs(self, batch: int = 1, seq: int = 5, past: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
        """Sample inputs keyed by `input_names()` (dict order == forward order).

        Positions continue after the past (`past .. past+seq-1`) and the mask is all ones,
        as in a real decode step. Values come from a private generator, so calling this does
        not disturb the global torch RNG.
        """
        p = next(self.model.parameters())
        gen = torch.Generator().manual_seed(seed)

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=gen).to(device=p.device, dtype=p.dtype)

        inputs = {
            "inputs_embeds": randn(batch, seq, self.hidden_size),  # (B, T, D)
            "attention_mask": torch.ones(batch, past + seq, dtype=torch.int64, device=p.device),  # (B, P+T)
            "position_ids": torch.arange(past, past + seq, device=p.device).expand(batch, seq).contiguous(),  # (B, T)
        }
        for name in self.kv_names("past"):
            inputs[name] = randn(batch, self.num_kv_heads, past, self.head_dim)  # (B, H_kv, P, hd)
        return inputs

    def empty_past(self, batch: int = 1) -> list[torch.Tensor]:
        """A zero-length past (P = 0) for a prefill step: [k_0, v_0, ...], each (B, H_kv, 0, hd)."""
        p = next(self.model.parameters())
        shape = (batch, self.num_kv_heads, 0, self.head_dim)
        return [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(2 * self.num_layers)]

    # -- the exported computation ---------------------------------------------------------

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        *past_key_values: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        """One prefill or decode step.

        inputs_embeds (B,T,D) float; attention_mask (B,P+T) int64, 1 = attend, 0 = padding;
        position_ids (B,T) int64; past_key_values = k_0, v_0, k_1, v_1, ... each
        (B,H_kv,P,hd), P may be 0. Returns (logits (B,T,V), hidden (B,T,D) after the final
        norm, present k_0, v_0, ... each (B,H_kv,P+T,hd)).
        """
        from transformers import DynamicCache

        n = self.num_layers
        if len(past_key_values) != 2 * n:
            raise ValueError(
                f"expected {2 * n} past tensors (key and value for each of {n} layers), got {len(past_key_values)}"
            )
        pairs = [(past_key_values[2 * i], past_key_values[2 * i + 1]) for i in range(n)]  # each (B, H_kv, P, hd)
        cache = DynamicCache(pairs, config=self.model.config)
        out = self.model.model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
        )
        hidden = out.last_hidden_state  # (B, T, D), after the final RMSNorm
        logits = self.model.lm_head(hidden)  # (B, T, V)
        presents: list[torch.Tensor] = []
        for layer in out.cache.layers:
            presents += [layer.keys, layer.values]  # (B, H_kv, P+T, hd) each
        return (logits, hidden, *presents)


class EmbedTokens(nn.Module):
    """input_ids (B,T) int64 -> (B,T,D): the LLM's embedding table as its own component.

    Holds the decoder's `nn.Embedding` itself (not a copy), so both components export the
    same weights and a resize of one is a resize of the other.
    """

    def __init__(self, embedding: nn.Embedding):
        super().__init__()
        self.embedding = embedding

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(input_ids)  # (B, T, D)

    def dummy_inputs(self, batch: int = 1, seq: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
        """Seeded token ids over the whole vocabulary (added tokens included)."""
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, self.embedding.num_embeddings, (batch, seq), generator=gen)  # (B, T)
        return {"input_ids": ids.to(self.embedding.weight.device)}


@torch.inference_mode()
def greedy_generate(
    decoder: LlmDecoder,
    embed: EmbedTokens,
    input_ids: Sequence[int],
    max_new_tokens: int,
    eos_token_id: int | Sequence[int] | None,
) -> list[int]:
    """Greedy decoding through the wrapper with explicit KV tensors: the torch oracle.

    One prefill step over the whole prompt (P = 0), then one token per step (T = 1) feeding
    back the presents as the next past. Returns the new tokens only (not the prompt); an
    end token is included, as `generate()` does, and ends the loop. Ties in argmax go to
    the lowest id.
    """
    if not input_ids:
        raise ValueError("greedy_generate needs a non-empty prompt")
    if eos_token_id is None:
        stop: set[int] = set()
    elif isinstance(eos_token_id, int):
        stop = {eos_token_id}
    else:
        stop = set(eos_token_id)
    device = embed.embedding.weight.device
    ids = torch.tensor([list(input_ids)], dtype=torch.int64, device=device)  # (1, T)
    past = decoder.empty_past(batch=1)
    n_past = 0
    new: list[int] = []
    for _ in range(max_new_tokens):
        t = ids.shape[1]
        mask = torch.ones(1, n_past + t, dtype=torch.int64, device=device)  # (1, P+T)
        pos = torch.arange(n_past, n_past + t, dtype=torch.int64, device=device)[None]  # (1, T)
        logits, _hidden, *past = decoder(embed(ids), mask, pos, *past)
        token = int(torch.argmax(logits[0, -1]))
        new.append(token)
        if token in stop:
            break
        n_past += t
        ids = torch.tensor([[token]], dtype=torch.int64, device=device)  # (1, 1)
    return new
