"""Weight-quantised copies of the decoder's "ort-gqa" variant: its MatMul weights as
ONNX Runtime's block-quantised `com.microsoft.MatMulNBits`, everything else unchanged.

    llm_decoder.ort-gqa.onnx (fp32, written by llm_gqa.py)
      │  onnxruntime.quantization MatMulNBitsQuantizer (round-to-nearest, per block of K)
      ▼
    llm_decoder.ort-gqa-int4.onnx
      MatMul(x, W (K,N) fp32)  ─►  MatMulNBits(x, Q (N, K/bs, bs·bits/8) uint8, scales (N·K/bs))
      every layer's qkv / o / gate / up / down, and lm_head at `lm_head_bits`
      RMSNorm, GroupQueryAttention, RoPE tables, residuals: fp32 as before

The I/O contract is the base variant's (inputs_embeds, attention_mask, one shared KV
buffer per layer), so the runtime serves it with the same `SharedBufferKvCache`; the
manifest entry says which base it shares (`attributes["base"]`), its weight precision
(`precision`) and the scheme. The embedding (`embed_tokens`, a Gather reading one row
per token) stays fp32.

Scheme, as onnxruntime-genai's model builder does for CPU int4 (read, not copied):
symmetric blocks of 32 along K (a scale per 32 weights, no zero point), accuracy_level 4:
the CPU kernel quantises each activation block to int8 and multiplies in int8 (VNNI),
the fastest of its paths. Each choice was measured on SmolLM2-135M: see `WeightQuant`.

Quantised weights cannot reproduce fp32 greedy tokens exactly, so the check
(`QuantizedGqaDecoder.validate`) is in two parts. What makes the file right: it is the
fp32 variant's graph (checked exactly against PyTorch) with MatMulNBits for MatMul, and
every dequantised weight lies within one quantisation step of the fp32 weight. What the
quantisation costs, stated as data (`QUANT_TOLERANCES`, each with its measured reason):
logits and hidden states within a loose relative tolerance of PyTorch's, a minimum top-1
agreement with the fp32 reference fed its own tokens, and the greedy prefix, reported.
Every number comes back in the validation rows (export log, `check` table), pass or fail.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from vitron_rt.bundle import Tolerance
from vitron_rt.export.errors import ExportError
from vitron_rt.export.llm_gqa import (
    EXTERNAL_DATA_THRESHOLD,
    GREEDY_TOKENS,
    PROMPT_LEN,
    GqaStepper,
    OrtGqaDecoder,
    reference_greedy,
)
from vitron_rt.export.spec import GraphVariant
from vitron_rt.export.validate import Comparison, ToleranceError, ValidationRow, compare, failure_message


@dataclass(frozen=True)
class WeightQuant:
    """One weight-quantisation scheme for the decoder's MatMuls (one `--quant` mode).

    `name` is the mode and the variant's precision ("int4"); the variant's kind is
    `ort-gqa-<name>`."""

    name: str
    bits: int = 4  # 4 or 8: what MatMulNBits' CPU kernels implement
    # 32: genai's CPU default. 64 halves the scales: decode 8% faster on SmolLM2 but
    # perplexity 63.6 against 51.5 (fp32: 37.1), so not worth it.
    block_size: int = 32
    # 4: int8 activations (MLAS's VNNI kernels): SmolLM2 decode 1.4x faster than 1 (fp32
    # activations) at perplexity 51.5 against 51.1.
    accuracy_level: int = 4
    # Symmetric: a scale per block, no zero point (genai's default). Asymmetric (uint4 +
    # zero point) and ORT's k_quant measured worse on SmolLM2 (perplexity 54.1, 56.0).
    symmetric: bool = True
    # lm_head (V x D, the largest matrix): its own bit width, or None to keep it fp32.
    # On SmolLM2 (decode speed against genai int4, perplexity): int4 0.96x, 51.5;
    # int8 0.89x, 49.1; fp32 0.66x, 49.0. int4 is the one that keeps pace with genai.
    lm_head_bits: int | None = 4

    def __post_init__(self) -> None:
        if self.bits not in (4, 8) or self.lm_head_bits not in (None, 4, 8):
            raise ValueError(f"{self.name}: MatMulNBits weights are 4 or 8 bits (lm_head may stay fp32: None)")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ValueError(f"{self.name}: block_size must be a power of two >= 16, got {self.block_size}")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise ValueError(f"{self.name}: accuracy_level is 0..4, got {self.accuracy_level}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "quantizer": "onnxruntime MatMulNBitsQuantizer (round to nearest)"}


# The `--quant` modes. int4 is genai's CPU int4 scheme, lm_head included (17.7 MB at
# int4 against 113 MB fp32): SmolLM2's decoder is 86.4 MB against 540 MB. int8 (153.6 MB)
# is near fp32 in quality (perplexity 38.1 against 37.1) but decodes at 0.7x int4.
QUANT_MODES: dict[str, WeightQuant] = {
    "int4": WeightQuant("int4", bits=4, lm_head_bits=4),
    "int8": WeightQuant("int8", bits=8, lm_head_bits=8),
}


# --------------------------------------------------------------------------- the graph rewrite


def lm_head_node(model: onnx.ModelProto, logits: str = "logits") -> onnx.NodeProto:
    """The MatMul that computes `logits`, found by walking back from the graph output
    through Identity / Add (a bias) nodes, so no node name is assumed."""
    producer = {o: n for n in model.graph.node for o in n.output}
    name = logits
    while name in producer:
        node = producer[name]
        if node.op_type == "MatMul":
            return node
        if node.op_type not in ("Identity", "Add"):
            break
        name = node.input[0]
    raise ExportError(f"no MatMul produces {logits!r} (through Identity / Add); cannot find the LM head")


def quantize_decoder(src: Path, dst: Path, scheme: WeightQuant) -> dict[str, int]:
    """Write `src` (an fp32 decoder graph) to `dst` with its MatMul weights quantised by
    `scheme`; the LM head at `scheme.lm_head_bits`. Returns counts of what was quantised
    ({"matmuls": n, "lm_head_bits": b or 0, "weight_bytes": ...})."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(src))
    head = lm_head_node(model).name
    matmuls = sum(1 for n in model.graph.node if n.op_type == "MatMul")

    def run(m: onnx.ModelProto, bits: int, **select: Any) -> onnx.ModelProto:
        q = MatMulNBitsQuantizer(
            m,
            bits=bits,
            block_size=scheme.block_size,
            is_symmetric=scheme.symmetric,
            accuracy_level=scheme.accuracy_level,
            **select,
        )
        q.process()
        return q.model.model

    quant_log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = quant_log.level
    quant_log.setLevel(logging.WARNING)  # one INFO line per MatMul otherwise
    try:
        if scheme.lm_head_bits == scheme.bits:
            model = run(model, scheme.bits)
        else:
            model = run(model, scheme.bits, nodes_to_exclude=[head])
            if scheme.lm_head_bits is not None:
                model = run(model, scheme.lm_head_bits, nodes_to_include=[head])
    finally:
        quant_log.setLevel(level)
    left = [n.name for n in model.graph.node if n.op_type == "MatMul" and (n.name != head or scheme.lm_head_bits)]
    if left:
        raise ExportError(f"MatMulNBitsQuantizer left {len(left)} MatMul(s) in fp32, e.g. {left[0]!r}")
    weight_bytes = sum(t.ByteSize() for t in model.graph.initializer)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if weight_bytes > EXTERNAL_DATA_THRESHOLD:
        onnx.save(
            model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True, location=dst.name + ".data"
        )
    else:
        onnx.save(model, str(dst))
    return {"matmuls": matmuls, "lm_head_bits": scheme.lm_head_bits or 0, "weight_bytes": weight_bytes}


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def dequantize_nbits(node: onnx.NodeProto, tensor: Any) -> tuple[np.ndarray, np.ndarray]:
    """The weight a MatMulNBits node multiplies by, as (K, N) float32, and each element's
    quantisation step |scale| (K, N). `tensor(name)` returns an initializer as numpy.
    Layout (ONNX Runtime's contrib op): B (N, K/bs, bs*bits/8) uint8, low nibble first;
    scales (N*K/bs); zero points uint8-packed per block, default 2^(bits-1)."""
    a = _attrs(node)
    k, n, bits, bs = a["K"], a["N"], a["bits"], a["block_size"]
    packed = tensor(node.input[1])
    blocks = packed.shape[1]
    if bits == 4:
        q = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, blocks, bs)  # (N, nb, bs)
    elif bits == 8:
        q = packed.reshape(n, blocks, bs)
    else:
        raise ExportError(f"{node.name}: {bits}-bit MatMulNBits is not checked here")
    scales = tensor(node.input[2]).reshape(n, blocks).astype(np.float32)  # (N, nb)
    zp = np.full((n, blocks), 1 << (bits - 1), np.float32)
    if len(node.input) > 3 and node.input[3]:
        z = tensor(node.input[3])
        if z.dtype != np.uint8:
            raise ExportError(f"{node.name}: float zero points are not checked here")
        if bits == 4:
            z = np.stack([z & 0x0F, z >> 4], axis=-1).reshape(n, -1)
        zp = z[:, :blocks].astype(np.float32)
    w = (q.astype(np.float32) - zp[..., None]) * scales[..., None]  # (N, nb, bs)
    step = np.broadcast_to(np.abs(scales)[..., None], w.shape)
    return w.reshape(n, -1)[:, :k].T, step.reshape(n, -1)[:, :k].T  # (K, N)


def compare_to_base(base_path: Path, quant_path: Path) -> tuple[float, int]:
    """Check that `quant_path` is `base_path` with MatMuls replaced by MatMulNBits (every
    other node the same) and return (the worst |dequantised - fp32| weight error in
    quantisation steps, over all matrices; how many matrices). Round-to-nearest is off
    by at most half a step, one step at the clipped end of a symmetric range."""
    from onnx import numpy_helper

    base = onnx.load(str(base_path), load_external_data=False)
    quant = onnx.load(str(quant_path), load_external_data=False)

    def reader(model: onnx.ModelProto, folder: Path):
        inits = {t.name: t for t in model.graph.initializer}
        return lambda name: numpy_helper.to_array(inits[name], base_dir=str(folder))

    base_tensor, quant_tensor = reader(base, base_path.parent), reader(quant, quant_path.parent)
    sig = lambda n: (n.op_type, tuple(n.input), tuple(n.output))  # noqa: E731
    by_output = {n.output[0]: n for n in quant.graph.node if n.op_type == "MatMulNBits"}
    rest_base = sorted(sig(n) for n in base.graph.node if n.op_type != "MatMul" or n.output[0] not in by_output)
    rest_quant = sorted(sig(n) for n in quant.graph.node if n.op_type != "MatMulNBits")
    if rest_base != rest_quant:  # a MatMul left in fp32 (an fp32 lm_head) must be the base's own
        raise ExportError(f"{quant_path.name}: nodes other than the quantised MatMuls differ from {base_path.name}")
    worst, count = 0.0, 0
    for node in base.graph.node:
        q = by_output.get(node.output[0])
        if node.op_type != "MatMul" or q is None:
            continue
        if q.input[0] != node.input[0]:
            raise ExportError(f"{quant_path.name}: {q.name} does not read {node.name}'s input {node.input[0]!r}")
        w = base_tensor(node.input[1]).astype(np.float32)  # (K, N)
        deq, step = dequantize_nbits(q, quant_tensor)
        if deq.shape != w.shape:
            raise ExportError(f"{quant_path.name}: {q.name} holds a {deq.shape} weight, the base {w.shape}")
        err = np.abs(deq - w) / np.maximum(step, np.finfo(np.float32).tiny)
        worst, count = max(worst, float(err.max())), count + 1
    return worst, count


# --------------------------------------------------------------------------- the check
#
# Against the fp32 PyTorch module, on the fp32 check's seeded prompt (PROMPT_LEN random
# ids) and its GREEDY_TOKENS greedy tokens, measured:
#
#                             logits        hidden        top-1       greedy
#                             median rel    median rel    agreement   prefix
#   SmolLM2-135M  int4        0.45          0.50          0.47        1 / 32
#                 int8        0.031         0.050         0.97        18 / 32
#   tiny decoders int4        0.12-0.15     0.08-0.10     0.75-1.0    0-32 / 32
#                 int8        0.010-0.012   0.006-0.008   1.0         32 / 32
#
# (Random ids make a hard prompt: on English text int4's top-1 agreement is 0.66-0.71,
# see bench/quality.py.) Thresholds sit below the worst measured case with margin; an
# unrelated graph's logits give a median rel err near 1.4.


# Round to nearest: at most half a step from the weight, a whole step at the clipped end
# of a symmetric range (the block's largest magnitude maps to -2^(bits-1), its opposite
# number can only reach 2^(bits-1) - 1).
# 0.1% over one step: the scales are fp32 divisions (measured 1.0000073 on SmolLM2's head).
WEIGHT_STEPS = 1.001
WEIGHT_STEPS_REASON = "round to nearest: <= 1/2 step, 1 step where a symmetric range clips"


@dataclass(frozen=True)
class QuantTolerances:
    """What a quantised decoder is held to, per check (see the table above)."""

    logits: Tolerance
    hidden_states: Tolerance
    # top-1 agreement: fraction of positions whose argmax equals the fp32 reference's
    # token, with the reference's own tokens fed (no divergence cascade).
    min_top1: float
    min_top1_reason: str
    # greedy prefix: tokens generated freely before the first difference, as a fraction
    # of GREEDY_TOKENS (one early flip ends it, so it gates loosely).
    min_prefix: float
    min_prefix_reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


QUANT_TOLERANCES: dict[str, QuantTolerances] = {
    "int4": QuantTolerances(
        logits=Tolerance(
            atol=0.0,
            rtol=0.75,
            statistic="median",
            reason="int4 weights: median rel err measured 0.45 on SmolLM2, 0.12-0.15 on tiny decoders; "
            "unrelated logits give ~1.4",
        ),
        hidden_states=Tolerance(
            atol=0.0, rtol=0.75, statistic="median", reason="int4 weights: measured 0.50 on SmolLM2, 0.08-0.10 on tiny"
        ),
        min_top1=0.3,
        min_top1_reason="int4 weights: measured 0.47 on SmolLM2 (random-id prompt; 0.65 on English text), "
        "0.75-1.0 on tiny decoders",
        min_prefix=0.0,
        min_prefix_reason="reported, not gated: one early argmax flip changes every later token",
    ),
    "int8": QuantTolerances(
        logits=Tolerance(
            atol=0.0,
            rtol=0.1,
            statistic="median",
            reason="int8 weights: median rel err measured 0.031 on SmolLM2, 0.010-0.012 on tiny decoders",
        ),
        hidden_states=Tolerance(
            atol=0.0,
            rtol=0.15,
            statistic="median",
            reason="int8 weights: measured 0.050 on SmolLM2, 0.006-0.008 on tiny",
        ),
        min_top1=0.85,
        min_top1_reason="int8 weights: measured 0.97 on SmolLM2, 1.0 on tiny decoders",
        min_prefix=0.0,
        min_prefix_reason="reported, not gated: one early argmax flip changes every later token",
    ),
}


def _bound_row(component: str, kind: str, output: str, case: str, err: float, limit: float, reason: str):
    """A row for one measured error `err` that must be <= `limit` (shown as atol)."""
    tol = Tolerance(atol=limit, rtol=0.0, reason=reason)
    passed = err <= limit + 1e-9
    detail = "" if passed else f"{err:.3g} > the allowed {limit:.3g}"
    return ValidationRow(component, kind, output, case, tol, Comparison(err, err, err, err, passed, detail, False))


def _fraction_row(component: str, kind: str, output: str, case: str, value: float, floor: float, reason: str):
    """A row for a measured fraction `value` that must be >= `floor`: the table's error
    columns show the shortfall 1 - value against atol = 1 - floor."""
    return _bound_row(component, kind, output, case, 1.0 - value, 1.0 - floor, reason)


class QuantizedGqaDecoder(GraphVariant):
    """The `llm_decoder` variant of the module docstring for one `WeightQuant` scheme,
    derived from `base` (the fp32 "ort-gqa" variant): its file when the export wrote it
    beside `dst`, else built afresh into a temporary folder."""

    def __init__(self, scheme: WeightQuant, base: OrtGqaDecoder, tolerances: QuantTolerances | None = None):
        self.scheme = scheme
        self.base = base
        self.kind = f"{base.kind}-{scheme.name}"
        self.precision = scheme.name
        self.reason = (
            f"{scheme.name} weights (MatMulNBits, blocks of {scheme.block_size}, accuracy_level "
            f"{scheme.accuracy_level}); the {base.kind} I/O contract; ONNX Runtime only; not exact: "
            "checked by token agreement with fp32"
        )
        if tolerances is None and scheme.name not in QUANT_TOLERANCES:
            raise ValueError(f"no tolerances for quantisation {scheme.name!r}; pass tolerances=")
        self.tolerances = tolerances or QUANT_TOLERANCES[scheme.name]

    def __repr__(self) -> str:
        return f"QuantizedGqaDecoder({self.scheme!r}, base={self.base!r})"

    def attributes(self) -> dict[str, Any]:
        return {"base": self.base.kind, "quantization": self.scheme.to_dict(), "tolerances": self.tolerances.to_dict()}

    def base_path(self, path: Path) -> Path:
        """Where the export writes the base variant beside this one (`<component>.<kind>.onnx`)."""
        return path.with_name(path.name.replace(f".{self.kind}.onnx", f".{self.base.kind}.onnx"))

    def _with_base(self, module: Any, path: Path, use: Any) -> Any:
        """`use(base file)`: the fp32 base beside `path` (the export wrote and checked it
        already), else one built afresh into a temporary folder."""
        sibling = self.base_path(path)
        if sibling != path and sibling.is_file():
            return use(sibling)
        with tempfile.TemporaryDirectory(prefix="vitron-quant-") as tmp:
            base = Path(tmp) / f"base.{self.base.kind}.onnx"
            self.base.build_from(module, base)
            return use(base)

    def build_from(self, module: Any, dst: Path) -> None:
        self._with_base(module, dst, lambda base: quantize_decoder(base, dst, self.scheme))

    def validate(self, module: Any, spec: Any, path: Path, *, strict: bool = True) -> list[ValidationRow]:
        """First the file against its fp32 base variant: the same graph with MatMulNBits
        for MatMul, each dequantised weight within one quantisation step of fp32 (this is
        what makes the file right; the base is checked exactly against PyTorch). Then what
        the quantisation costs, against the fp32 PyTorch module on the seeded prompt and
        its GREEDY_TOKENS greedy tokens: logits and hidden states of the whole sequence
        (one prefill, the reference's tokens fed), top-1 agreement on it, and the greedy
        prefix generated through the shared KV buffers."""
        from vitron_rt.models.llm import EmbedTokens

        module.eval()
        tol, label, kind = self.tolerances, spec.name, self.kind
        steps, count = self._with_base(module, path, lambda base: compare_to_base(base, path))
        case = f"{count} MatMulNBits vs {self.base.kind}, in steps"
        rows = [_bound_row(label, kind, "weights", case, steps, WEIGHT_STEPS, WEIGHT_STEPS_REASON)]
        embed = EmbedTokens(module.input_embeddings())
        prompt, ref = reference_greedy(module)  # the fp32 variant's check ran the same
        with torch.no_grad():
            seq = torch.tensor([prompt + ref[:-1]])  # (1, P+N-1): each position predicts the next token
            embeds = embed(seq)  # (1, T, D)
            t = seq.shape[1]
            want = module(embeds, torch.ones(1, t, dtype=torch.int64), torch.arange(t)[None], *module.empty_past(1))
        buffer = min(self.base.buffer_length_for(module), PROMPT_LEN + GREEDY_TOKENS)
        got = GqaStepper(path, module, buffer).step(embeds.numpy())  # logits (1,T,V), hidden (1,T,D)
        case = f"prefill T={t}, reference tokens fed"
        rows += [
            ValidationRow(label, kind, "logits", case, tol.logits, compare(want[0].numpy(), got[0], tol.logits)),
            ValidationRow(
                label,
                kind,
                "hidden_states",
                case,
                tol.hidden_states,
                compare(want[1].numpy(), got[1], tol.hidden_states),
            ),
        ]
        top1 = got[0][0, PROMPT_LEN - 1 :].argmax(-1)  # (N,) predictions of the reference's tokens
        agree = float(np.mean(top1 == np.asarray(ref)))
        rows.append(
            _fraction_row(
                label, kind, "top-1 agreement", f"{GREEDY_TOKENS} tokens", agree, tol.min_top1, tol.min_top1_reason
            )
        )
        # Free-running greedy through the in-place buffers (the runtime's decode path).
        stepper = GqaStepper(path, module, buffer)
        with torch.no_grad():
            logits, _ = stepper.step(embed(torch.tensor([prompt])).numpy())
            tokens = [int(np.argmax(logits[0, -1]))]
            while len(tokens) < GREEDY_TOKENS:
                logits, _ = stepper.step(embed(torch.tensor([[tokens[-1]]])).numpy())
                tokens.append(int(np.argmax(logits[0, -1])))
        prefix = next((i for i, (a, b) in enumerate(zip(ref, tokens)) if a != b), GREEDY_TOKENS)
        rows.append(
            _fraction_row(
                label,
                kind,
                "greedy prefix",
                f"{prefix} of {GREEDY_TOKENS} tokens equal",
                prefix / GREEDY_TOKENS,
                tol.min_prefix,
                tol.min_prefix_reason,
            )
        )
        if strict and not all(r.passed for r in rows):
            raise ToleranceError(failure_message(rows), rows)
        return rows
