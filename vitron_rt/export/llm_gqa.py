"""The decoder as ONNX Runtime's GroupQueryAttention graph: one KV buffer per layer,
shared by past and present, so a decode step writes only its new keys and values.

The standard graph (`specs/llm.py`) concatenates past and new K/V into a fresh present
every step: a copy of the whole past per token. Here each layer's cache is one
(B,Hkv,S,hd) buffer (S: the buffer length, >= every position used) bound as both
`past_key_values.i.*` and `present.i.*`; `com.microsoft.GroupQueryAttention` sees the
same pointer on both sides and writes the step's T new rows in place at the positions
given by the attention mask's length. Positions come from the mask too (RoPE is applied
inside GQA from cos/sin tables), so the graph has no `position_ids` input.

The graph is written directly with `onnx.helper` from the module's weights (as
onnxruntime-genai's model builder does), not traced:

    inputs_embeds (B,T,D)
      │   attention_mask (B,P+T) ─► seqlens_k = sum-1 (B,) int32, total = P+T int32
      ▼
    ┌ per layer i ───────────────────────────────────────────────────────────────────┐
    │ x (+ d) ─► RMSNorm ─► MatMul W_qkv ─► GQA(packed qkv, past k/v i, seqlens_k,  │
    │ │                          total, cos, sin) ─► MatMul W_o = d   present k/v i  │
    │ x (+ d) ─► RMSNorm ─► gate, up ─► SiLU(gate)·up ─► MatMul W_down = d           │
    └────────────────────────────────────────────────────────────────────────────────┘
      ▼
    x + d ─► RMSNorm ─► hidden_states (B,T,D) ─► MatMul lm_head ─► logits (B,T,V)

Each residual Add is fused with the RMSNorm after it (SkipSimplifiedLayerNormalization:
normalised output, and x + d as the next residual), one node instead of two, as genai's
builder writes it; the first norm has nothing to add (SimplifiedLayerNormalization).

It loads in ONNX Runtime only (contrib ops), so it is a variant beside the standard
file, with its own I/O contract and its own check (`OrtGqaDecoder.validate`): prefill
and decode logits against PyTorch, and greedy tokens through the in-place buffers.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from vitron_rt.bundle import Tolerance
from vitron_rt.export.errors import ExportError
from vitron_rt.export.spec import GraphVariant
from vitron_rt.export.validate import ToleranceError, ValidationRow, compare, failure_message

KIND = "ort-gqa"
# ONNX domain opset of the graph; com.microsoft ops are version 1.
OPSET = 18
EXTERNAL_DATA_THRESHOLD = 1 << 30  # bytes of weights, as the standard export
# Greedy tokens the variant must reproduce exactly (as the main file's parity check).
GREEDY_TOKENS = 32
EXACT = Tolerance(atol=0.0, rtol=0.0, reason="greedy tokens must match exactly in fp32")
# The validation prompt: seeded token ids (the variant is checked without a tokenizer).
PROMPT_LEN = 9
PROMPT_SEED = 1234


# module -> (prompt ids, PyTorch's GREEDY_TOKENS greedy tokens after them); the fp32 and
# the quantised variants' checks (llm_quant.py) share one reference run per module.
_REFERENCE: "weakref.WeakKeyDictionary[Any, tuple[list[int], list[int]]]" = weakref.WeakKeyDictionary()


def reference_greedy(module: Any) -> tuple[list[int], list[int]]:
    """The seeded validation prompt (PROMPT_LEN ids) and PyTorch's GREEDY_TOKENS greedy
    tokens after it, computed once per module (memoised while the module lives)."""
    if module not in _REFERENCE:
        from vitron_rt.models.llm import EmbedTokens, greedy_generate

        g = torch.Generator().manual_seed(PROMPT_SEED)
        prompt = torch.randint(0, module.vocab_size, (1, PROMPT_LEN), generator=g)[0].tolist()
        with torch.no_grad():
            tokens = greedy_generate(module, EmbedTokens(module.input_embeddings()), prompt, GREEDY_TOKENS, None)
        _REFERENCE[module] = (prompt, tokens)
    prompt, tokens = _REFERENCE[module]
    return list(prompt), list(tokens)


def rope_tables(module: Any, length: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin (length, hd/2) float32 from the model's own rotary embedding module, so RoPE
    scaling (linear, llama3, ...) and its attention scaling are exactly transformers'."""
    rotary = module.model.model.rotary_emb
    pos = torch.arange(length, dtype=torch.int64)[None]  # (1, S)
    with torch.no_grad():
        cos, sin = rotary(torch.zeros(1, dtype=torch.float32), pos)  # (1, S, hd), halves repeated
    half = module.head_dim // 2
    return (
        np.ascontiguousarray(cos[0, :, :half].float().numpy()),
        np.ascontiguousarray(sin[0, :, :half].float().numpy()),
    )


class _Graph:
    """Nodes and initializers being collected, with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.bytes = 0

    def weight(self, name: str, array: np.ndarray) -> str:
        array = np.ascontiguousarray(array)
        self.inits.append(numpy_helper.from_array(array, name))
        self.bytes += array.nbytes
        return name

    def linear(self, name: str, x: str, lin: torch.nn.Linear) -> str:
        """x @ W^T (+ b): nn.Linear as MatMul over the transposed weight."""
        w = self.weight(f"{name}.weight_t", lin.weight.detach().float().numpy().T)  # (in, out)
        y = self.op("MatMul", [x, w], f"{name}/MatMul")
        if lin.bias is not None:
            y = self.op("Add", [y, self.weight(f"{name}.bias", lin.bias.detach().float().numpy())], f"{name}/Add")
        return y

    def rms_norm(self, name: str, x: str, norm: torch.nn.Module, delta: str | None = None) -> tuple[str, str]:
        """RMSNorm(x + delta) and x + delta (the residual stream after the add); without
        `delta`, RMSNorm(x) and x."""
        w = self.weight(f"{name}.weight", norm.weight.detach().float().numpy())
        eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
        if delta is None:
            return self.op("SimplifiedLayerNormalization", [x, w], name, axis=-1, epsilon=eps, stash_type=1), x
        out, _, _, total = self.op(
            "SkipSimplifiedLayerNormalization",
            [x, delta, w],
            name,
            outputs=[f"{name}/out", "", "", f"{name}/residual"],
            domain="com.microsoft",
            epsilon=eps,
        )
        return out, total

    def op(
        self, op_type: str, inputs: list[str], name: str, outputs: list[str] | None = None, domain: str = "", **attrs
    ) -> Any:
        outs = outputs or [f"{name}/out"]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, domain=domain, **attrs))
        return outs[0] if outputs is None else outs


def build_gqa_decoder(module: Any, dst: Path, buffer_length: int) -> None:
    """Write the GQA decoder graph of `module` (an `LlmDecoder`) to `dst`; weights inline,
    or beside it as `<dst>.data` above 1 GiB. `buffer_length`: positions the RoPE tables
    cover, i.e. the longest KV buffer the graph accepts."""
    cfg = module.model.config
    act = getattr(cfg, "hidden_act", "silu")
    if act != "silu":
        raise ExportError(f"{KIND}: the GQA builder emits a SiLU-gated MLP; this model's hidden_act is {act!r}")
    if module.head_dim % 2:
        raise ExportError(f"{KIND}: RoPE needs an even head_dim, got {module.head_dim}")
    nh, nkv, hd, d = module.num_heads, module.num_kv_heads, module.head_dim, module.hidden_size
    g = _Graph()
    past_names, present_names = module.kv_names("past"), module.kv_names("present")

    # Sequence lengths from the mask, as genai does: seqlens_k = sum(mask) - 1 per row
    # (the index of the last valid position), total = the mask's width.
    axis1 = g.weight("const.axis1", np.array([1], np.int64))
    mask_sum = g.op("ReduceSum", ["attention_mask", axis1], "mask/ReduceSum", keepdims=0)  # (B,)
    last = g.op("Sub", [mask_sum, g.weight("const.one", np.array(1, np.int64))], "mask/Sub")
    seqlens_k = g.op("Cast", [last], "mask/seqlens_k", to=TensorProto.INT32)  # (B,)
    width = g.op("Shape", ["attention_mask"], "mask/Shape", start=1, end=2)  # (1,)
    total = g.op("Cast", [g.op("Squeeze", [width], "mask/Squeeze")], "mask/total", to=TensorProto.INT32)  # ()
    cos, sin = rope_tables(module, buffer_length)
    cos_name, sin_name = g.weight("rope.cos", cos), g.weight("rope.sin", sin)  # (S, hd/2)

    x, delta = "inputs_embeds", None  # the residual stream, and the sublayer output still to add to it
    for i, layer in enumerate(module.model.model.layers):
        p = f"layers.{i}"
        attn, mlp = layer.self_attn, layer.mlp
        h, x = g.rms_norm(f"{p}.input_layernorm", x, layer.input_layernorm, delta)
        qkv = torch.nn.Linear(d, (nh + 2 * nkv) * hd, bias=attn.q_proj.bias is not None)
        with torch.no_grad():
            qkv.weight.copy_(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
            if qkv.bias is not None:
                qkv.bias.copy_(torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))
        packed = g.linear(f"{p}.qkv_proj", h, qkv)  # (B, T, (H + 2 Hkv) hd)
        a, _, _ = g.op(
            "GroupQueryAttention",
            [packed, "", "", past_names[2 * i], past_names[2 * i + 1], seqlens_k, total, cos_name, sin_name],
            f"{p}.attn",
            outputs=[f"{p}.attn/out", present_names[2 * i], present_names[2 * i + 1]],
            domain="com.microsoft",
            num_heads=nh,
            kv_num_heads=nkv,
            scale=float(attn.scaling),
            do_rotary=1,
            rotary_interleaved=0,
            local_window_size=-1,
        )  # (B, T, H hd); presents (B, Hkv, S, hd), the past buffers when shared
        delta = g.linear(f"{p}.o_proj", a, attn.o_proj)  # (B, T, D)
        h, x = g.rms_norm(f"{p}.post_attention_layernorm", x, layer.post_attention_layernorm, delta)
        gate = g.linear(f"{p}.gate_proj", h, mlp.gate_proj)  # (B, T, F)
        silu = g.op("Mul", [gate, g.op("Sigmoid", [gate], f"{p}.mlp/Sigmoid")], f"{p}.mlp/SiLU")
        up = g.op("Mul", [silu, g.linear(f"{p}.up_proj", h, mlp.up_proj)], f"{p}.mlp/gated")
        delta = g.linear(f"{p}.down_proj", up, mlp.down_proj)  # (B, T, D)
    hidden, _ = g.rms_norm("norm", x, module.model.model.norm, delta)
    g.nodes.append(helper.make_node("Identity", [hidden], ["hidden_states"], name="hidden_states"))
    head = module.model.lm_head
    g.nodes.append(helper.make_node("Identity", [g.linear("lm_head", hidden, head)], ["logits"], name="logits"))

    f32 = TensorProto.FLOAT
    kv_in = [helper.make_tensor_value_info(n, f32, ["batch", nkv, "kv_buffer", hd]) for n in past_names]
    kv_out = [helper.make_tensor_value_info(n, f32, ["batch", nkv, "kv_buffer", hd]) for n in present_names]
    graph = helper.make_graph(
        g.nodes,
        "llm_decoder_gqa",
        [
            helper.make_tensor_value_info("inputs_embeds", f32, ["batch", "sequence", d]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_sequence"]),
            *kv_in,
        ],
        [
            helper.make_tensor_value_info("logits", f32, ["batch", "sequence", module.vocab_size]),
            helper.make_tensor_value_info("hidden_states", f32, ["batch", "sequence", d]),
            *kv_out,
        ],
        g.inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)],
        producer_name="vitron_rt.export.llm_gqa",
    )
    dst.parent.mkdir(parents=True, exist_ok=True)
    if g.bytes > EXTERNAL_DATA_THRESHOLD:
        onnx.save(
            model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True, location=dst.name + ".data"
        )
    else:
        onnx.save(model, str(dst))


class GqaStepper:
    """The variant's decode loop for checks: batch 1, (1,Hkv,S,hd) buffers allocated once
    and bound as past and present on one IOBinding (the runtime's `SharedBufferKvCache`
    does the same with its own buffers)."""

    def __init__(self, path: Path, module: Any, buffer_length: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        shape = (1, module.num_kv_heads, buffer_length, module.head_dim)
        self.kv = [ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32)) for _ in module.kv_names("past")]
        self.binding = self.session.io_binding()
        for name in ("logits", "hidden_states"):  # output slots 0, 1 (rebinding keeps a slot)
            self.binding.bind_output(name, "cpu")
        for past, present, value in zip(module.kv_names("past"), module.kv_names("present"), self.kv):
            self.binding.bind_ortvalue_input(past, value)
            self.binding.bind_ortvalue_output(present, value)
        self.length = 0

    def step(self, embeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(1, T, D) at positions length..length+T-1 -> logits (1,T,V), hidden (1,T,D)."""
        t = embeds.shape[1]
        mask = np.ones((1, self.length + t), np.int64)  # (1, P+T)
        self.binding.bind_cpu_input("inputs_embeds", np.ascontiguousarray(embeds, np.float32))
        self.binding.bind_cpu_input("attention_mask", mask)
        self.binding.bind_output("logits", "cpu")
        self.binding.bind_output("hidden_states", "cpu")
        self.session.run_with_iobinding(self.binding)
        out = self.binding.get_outputs()
        self.length += t
        return out[0].numpy(), out[1].numpy()


class OrtGqaDecoder(GraphVariant):
    """The `llm_decoder` variant described in the module docstring. `buffer_length`: the
    longest KV buffer (and RoPE table) the graph serves; None: the model's
    max_position_embeddings. The manifest records it as `llm.kv_buffer_length`."""

    kind = KIND
    reason = "ONNX Runtime contrib ops: GroupQueryAttention with a shared past/present buffer; not for TensorRT"

    def __init__(self, buffer_length: int | None = None):
        self.buffer_length = buffer_length

    def __repr__(self) -> str:
        return f"OrtGqaDecoder(buffer_length={self.buffer_length!r})"

    def buffer_length_for(self, module: Any) -> int:
        ctx = int(module.model.config.max_position_embeddings)
        return ctx if self.buffer_length is None else min(ctx, int(self.buffer_length))

    def build_from(self, module: Any, dst: Path) -> None:
        build_gqa_decoder(module, dst, self.buffer_length_for(module))

    def validate(self, module: Any, spec: Any, path: Path, *, strict: bool = True) -> list[ValidationRow]:
        """Prefill and one decode step against PyTorch at the spec's tolerances, then
        `GREEDY_TOKENS` greedy tokens through the shared buffers, which must be PyTorch's."""
        from vitron_rt.models.llm import EmbedTokens

        module.eval()
        embed = EmbedTokens(module.input_embeddings())
        prompt_ids, ref = reference_greedy(module)
        prompt = torch.tensor([prompt_ids])  # (1, T)
        buffer = min(self.buffer_length_for(module), PROMPT_LEN + GREEDY_TOKENS)
        rows: list[ValidationRow] = []
        label = spec.name

        def check(case: str, embeds: torch.Tensor, past: list, p: int, got: tuple[np.ndarray, np.ndarray]) -> list:
            t = embeds.shape[1]
            mask = torch.ones(1, p + t, dtype=torch.int64)
            pos = torch.arange(p, p + t)[None]
            with torch.no_grad():
                out = module(embeds, mask, pos, *past)
            for name, r, o in (("logits", out[0], got[0]), ("hidden_states", out[1], got[1])):
                tol = spec.tolerance(name)
                rows.append(ValidationRow(label, KIND, name, case, tol, compare(r.numpy(), o, tol)))
            return list(out[2:])

        stepper = GqaStepper(path, module, buffer)
        with torch.no_grad():
            embeds = embed(prompt)  # (1, T, D)
        got = stepper.step(embeds.numpy())
        past = check(f"prefill T={PROMPT_LEN}", embeds, module.empty_past(1), 0, got)
        # Greedy through the shared buffers, checking the first decode step's values too.
        tokens = [int(np.argmax(got[0][0, -1]))]
        for n in range(1, GREEDY_TOKENS):
            with torch.no_grad():
                e = embed(torch.tensor([[tokens[-1]]]))  # (1, 1, D)
            got = stepper.step(e.numpy())
            if n == 1:
                check(f"decode P={PROMPT_LEN}", e, past, PROMPT_LEN, got)
            tokens.append(int(np.argmax(got[0][0, -1])))
        result = compare(np.asarray(ref, np.int64), np.asarray(tokens, np.int64), EXACT)
        rows.append(ValidationRow(label, KIND, "greedy tokens", f"{GREEDY_TOKENS} tokens", EXACT, result))
        if strict and not all(r.passed for r in rows):
            raise ToleranceError(failure_message(rows), rows)
        return rows
