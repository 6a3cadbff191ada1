"""ONNX Runtime fusions for the CPU: a standard-opset graph rewritten into com.microsoft
fused kernels before ONNX Runtime's own optimizer sees it.

ONNX Runtime's built-in optimizer does not recognise attention or the erf-GELU in the
graphs the dynamo exporter writes, so on the CPU an exported encoder runs scaled
dot-product attention as six to ten separate kernels: the (…,S,L) score tensor is written,
scaled, biased, soft-maxed and read back through memory, and K is transposed by a copy.
`fuse_model` rewrites it in two passes:

  1. attention (ours). Every subgraph of the shape the exporter decomposes
     `softmax(q·kᵀ·scale + bias) · v` into, whatever the model (CLIP, SAM's windowed
     attention with its decomposed relative positions, SAM's two-way decoder, diffusers'
     self- and cross-attention):

         q (…,S,hd) ─[Mul c]─┐                                   ┌─ v (…,L,hd)
         k (…,L,hd) ─ Kᵀ ─[Mul c]─ MatMul ─[Add bias]─ Softmax ─ MatMul ─► o (…,S,hd)

     becomes one `com.microsoft.MultiHeadAttention` (scale c·c), in one of two forms:

       heads  q, k, v are the usual split of (B,S,H·hd) projections into heads:

                x ─ MatMul [Wq|Wk|Wv] ─ Split ─ q, k, v (B,S,H·hd) ─┐
                                       bias [bq|bk|bv] ──────────────┴► MultiHeadAttention
                                                  (num_heads=H) ─► (B,S,H·hd) ─ merge ─►

              the projections of one input are packed into one wider MatMul, their bias
              Adds go into the kernel (which adds them while it lays q, k, v out per
              head), and the split into heads and the merge after it become views. On
              the flash-attention path (no score bias) no score tensor is written at all.
       rows   anything else (SAM's (B·H,N,hd) tensors with a relative-position bias): the
              leading dims are flattened into the kernel's batch with one head, every
              reshape a view of a contiguous tensor; q·kᵀ, bias and softmax run in one
              pass per row.

     Kᵀ is recognised as a transpose of the last two axes, directly or as the exporter's
     Reshape ─ Transpose(0,2,1) ─ Reshape of a rank-4 tensor; anything else is left alone
     and counted in the report with the reason.
  2. two of ONNX Runtime's transformer fusions (`onnxruntime.transformers`), one by one:
     erf-GELU -> Gelu and bias Add + Gelu -> BiasGelu (see `_ort_transformer_pass` for why
     not its whole "bert" pipeline).

Nothing here knows a model: the passes match graph shapes, and the counts of what they
fused come back in a `FusionReport`. Whether the result still computes the model is
decided by parity against PyTorch (`vitron-rt export` / `check` run the fused graph,
since they run files through `OrtRunner`).

Needs the `onnx` package (onnxruntime's transformer tools import it); `onnx_available()`
says whether it is installed.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Bumped whenever a pass changes what it writes: part of the cached graph's file name.
FUSION_VERSION = 2
MS_DOMAIN = "com.microsoft"
# Above this many bytes of weights a fused graph is saved with external data (protobuf's
# 2 GiB limit), as the optimized-model cache does.
EXTERNAL_DATA_ABOVE = 1 << 30

log = logging.getLogger(__name__)


def onnx_available() -> bool:
    return importlib.util.find_spec("onnx") is not None


@dataclass
class FusionReport:
    """What the passes fused: fused op type -> count, and attention subgraphs left alone
    (with the first reason each was skipped)."""

    fused: dict[str, int] = field(default_factory=dict)
    skipped_attention: dict[str, int] = field(default_factory=dict)
    # Whether a fused graph was written (False: nothing to fuse, run the source as it is).
    written: bool = False

    def to_json(self) -> str:
        return json.dumps({"version": FUSION_VERSION, "fused": self.fused, "skipped_attention": self.skipped_attention,
                           "written": self.written})

    @classmethod
    def from_json(cls, text: str) -> "FusionReport":
        d = json.loads(text)
        return cls(dict(d.get("fused", {})), dict(d.get("skipped_attention", {})), bool(d.get("written", False)))

    def summary(self) -> str:
        fused = ", ".join(f"{k} {v}" for k, v in sorted(self.fused.items()) if v) or "nothing"
        skipped = sum(self.skipped_attention.values())
        return fused + (f"; {skipped} attention subgraphs left unfused" if skipped else "")


# --------------------------------------------------------------------------- graph access


class _Graph:
    """Producer / consumer maps and static shapes of one onnx GraphProto."""

    def __init__(self, graph: Any):
        from onnx import numpy_helper

        self.g = graph
        self._np = numpy_helper
        self.inits = {t.name: t for t in graph.initializer}
        self.refresh()
        self.shapes: dict[str, list[int | str | None]] = {}
        for v in (*graph.input, *graph.output, *graph.value_info):
            t = v.type.tensor_type
            if t.HasField("shape"):
                self.shapes[v.name] = [
                    d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim
                ]
        for t in graph.initializer:
            self.shapes[t.name] = list(t.dims)
        self._names = Counter()
        # id(old node) -> the nodes that take its place (applied by the pass at the end).
        self.replacements: dict[int, list[Any]] = {}

        self.packed = 0  # projections packed into one MatMul (counted for the report)

    def replace_node(self, old: Any, *new: Any) -> None:
        self.replacements[id(old)] = list(new)

    def refresh(self) -> None:
        # Held, so each node keeps one Python wrapper: nodes are keyed by id() below.
        self.nodes = list(self.g.node)
        self.order = {id(n): i for i, n in enumerate(self.nodes)}
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list[Any]] = defaultdict(list)
        for n in self.nodes:
            for i in n.input:
                self.consumers[i].append(n)
        self.outputs = {o.name for o in self.g.output}

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer or a Constant node's output, else None."""
        if name in self.inits:
            t = self.inits[name]
            if t.data_location == t.EXTERNAL and not t.raw_data:
                return None  # weights not loaded: never a scale constant
            return self._np.to_array(t)
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return self._np.to_array(a.t)
        return None

    def scalar(self, name: str) -> float | None:
        value = self.const(name)
        if value is None or value.size != 1 or not np.issubdtype(value.dtype, np.floating):
            return None
        return float(value.reshape(()))

    def rank(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)

    def single_consumer(self, name: str) -> Any | None:
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in self.outputs else None

    def fresh(self, base: str) -> str:
        self._names[base] += 1
        return f"{base}/{self._names[base]}"

    def add_const(self, name: str, value: np.ndarray) -> str:
        tensor = self._np.from_array(value, name)
        self.g.initializer.append(tensor)
        self.inits[name] = tensor
        return name


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


# --------------------------------------------------------------------------- pass 1: attention


class _Skip(Exception):
    """This subgraph is not the attention pattern (the message says why)."""


@dataclass
class _Attention:
    softmax: Any
    score_mm: Any
    out_mm: Any
    q: str
    k: str
    v: str
    bias: str | None
    scale: float


def _strip_scale(g: _Graph, name: str) -> tuple[str, float]:
    """x for `Mul(x, c)` / `Div(x, c)` with a scalar constant c (and x's single use), else
    (name, 1.0)."""
    node = g.producer.get(name)
    if node is None or node.op_type not in ("Mul", "Div") or g.single_consumer(name) is None:
        return name, 1.0
    for i, j in ((0, 1), (1, 0)):
        c = g.scalar(node.input[j])
        if c is None or (node.op_type == "Div" and j == 0):
            continue
        return node.input[i], (c if node.op_type == "Mul" else 1.0 / c)
    return name, 1.0


def _untranspose(g: _Graph, kt: str) -> str | None:
    """K for a tensor Kᵀ that is K with its last two axes swapped, when the graph shows it:
    a Transpose swapping the last two axes, or Reshape ─ Transpose(0,2,1) ─ Reshape of a
    rank-4 K (the exporter's `k.transpose(-2, -1)` of a (B,H,L,hd) tensor)."""
    node = g.producer.get(kt)
    if node is None:
        return None
    if node.op_type == "Transpose":
        perm = list(_attr(node, "perm", []))
        n = len(perm)
        if n >= 2 and perm == [*range(n - 2), n - 1, n - 2]:
            return node.input[0]
        return None
    if node.op_type != "Reshape":
        return None
    tr = g.producer.get(node.input[0])
    if tr is None or tr.op_type != "Transpose" or list(_attr(tr, "perm", [])) != [0, 2, 1]:
        return None
    flat = g.producer.get(tr.input[0])
    if flat is None or flat.op_type != "Reshape":
        return None
    k = flat.input[0]
    # The reshapes only merge and split the leading axes: (…,L,hd) -> (-1,L,hd) -> (-1,hd,L)
    # -> (…,hd,L). The exporter leaves the middle shapes unknown; where they are known
    # they must agree.
    k_shape, kt_shape, mid = g.shapes.get(k), g.shapes.get(kt), g.shapes.get(flat.output[0])
    if k_shape is None or len(k_shape) < 3 or (mid is not None and len(mid) != 3):
        return None
    if kt_shape is not None:
        if len(kt_shape) != len(k_shape):
            return None
        known = [(a, b) for a, b in zip((*k_shape[:-2], k_shape[-1], k_shape[-2]), kt_shape) if None not in (a, b)]
        if any(a != b for a, b in known):
            return None
    return k


def _match_attention(g: _Graph, softmax: Any) -> _Attention:
    if g.rank(softmax.input[0]) is None:
        raise _Skip("score tensor of unknown rank")
    rank = g.rank(softmax.input[0])
    axis = _attr(softmax, "axis", -1)
    if axis not in (-1, rank - 1):
        raise _Skip("softmax not over the last axis")
    users = g.consumers.get(softmax.output[0], [])
    if len(users) != 1 or users[0].op_type != "MatMul" or users[0].input[0] != softmax.output[0]:
        raise _Skip("probabilities not consumed by one MatMul")
    if softmax.output[0] in g.outputs:
        raise _Skip("probabilities are a graph output")
    out_mm = users[0]
    scores = g.producer.get(softmax.input[0])
    if g.single_consumer(softmax.input[0]) is None or scores is None:
        raise _Skip("scores used elsewhere")
    bias = None
    post_scale = 1.0
    if scores.op_type in ("Mul", "Div"):
        inner, post_scale = _strip_scale(g, softmax.input[0])
        if post_scale == 1.0 and inner == softmax.input[0]:
            raise _Skip("scores scaled by a non-constant")
        scores = g.producer.get(inner)
    if scores is not None and scores.op_type == "Add":
        a, b = scores.input
        pa, pb = g.producer.get(a), g.producer.get(b)
        if pa is not None and pa.op_type == "MatMul" and g.single_consumer(a) is not None:
            mm_out, bias = a, b
        elif pb is not None and pb.op_type == "MatMul" and g.single_consumer(b) is not None:
            mm_out, bias = b, a
        else:
            raise _Skip("score bias not added to a MatMul")
        score_mm = g.producer[mm_out]
    elif scores is not None and scores.op_type == "MatMul":
        score_mm = scores
    else:
        raise _Skip(f"scores come from {scores.op_type if scores is not None else 'an input'}")
    q, cq = _strip_scale(g, score_mm.input[0])
    kts, ck = _strip_scale(g, score_mm.input[1])
    k = _untranspose(g, kts)
    if k is None:
        raise _Skip("Kᵀ is not a recognisable transpose of K")
    v = out_mm.input[1]
    ranks = {g.rank(q), g.rank(k), g.rank(v)}
    if len(ranks) != 1 or None in ranks or rank not in ranks or rank < 3:
        raise _Skip("q, k, v and scores differ in rank")
    qs, ks, vs = g.shapes[q], g.shapes[k], g.shapes[v]
    if qs[-1] is None or not isinstance(qs[-1], int) or qs[-1] != ks[-1]:
        raise _Skip("q and k head sizes differ or are not static")
    if not isinstance(vs[-1], int):
        raise _Skip("v head size not static")
    if qs[:-2] != ks[:-2] or ks[:-2] != vs[:-2] or any(d is None for d in qs[:-2]):
        raise _Skip("leading (batch, head) dims of q, k, v differ or are unknown")
    if bias is not None:
        bs = g.shapes.get(bias)
        if bs is None or len(bs) != rank or bs[:-2] != qs[:-2]:
            raise _Skip("score bias does not have the full leading dims of q")
    return _Attention(softmax, score_mm, out_mm, q, k, v, bias, cq * ck * post_scale)


def _split_heads(g: _Graph, x4: str) -> tuple[str, int, int] | None:
    """(x, H, hd) when the rank-4 `x4` is `Transpose(Reshape(x, (B,S,H,hd)), (0,2,1,3))` of
    a (B,S,H·hd) tensor x with static H and hd: the usual split into heads."""
    tr = g.producer.get(x4)
    if tr is None or tr.op_type != "Transpose" or list(_attr(tr, "perm", [])) != [0, 2, 1, 3]:
        return None
    rs = g.producer.get(tr.input[0])
    if rs is None or rs.op_type != "Reshape":
        return None
    x = rs.input[0]
    split, flat = g.shapes.get(rs.output[0]), g.shapes.get(x)
    if split is None or flat is None or len(split) != 4 or len(flat) != 3:
        return None
    h, hd = split[2], split[3]
    if not (isinstance(h, int) and isinstance(hd, int)) or flat[2] != h * hd:
        return None
    if any(a is not None and b is not None and a != b for a, b in zip(flat[:2], split[:2])):
        return None
    return x, h, hd


def _fold_projection_biases(g: _Graph, base: str, xs: tuple[str, str, str]) -> tuple[tuple[str, str, str], str]:
    """q, k, v that are `MatMul + Add(bias)` (the Add used only for the split into heads):
    the MatMul outputs, and the three biases packed for MultiHeadAttention's `bias` input,
    which adds them while it lays q, k and v out per head. ("" and `xs` unchanged when
    none has a bias.)"""
    stripped, biases = [], []
    for x in xs:
        add = g.producer.get(x)
        bias = None
        if add is not None and add.op_type == "Add" and len(g.consumers.get(x, [])) == 1 and x not in g.outputs:
            for i, j in ((0, 1), (1, 0)):
                mm = g.producer.get(add.input[i])
                value = g.const(add.input[j])
                if mm is not None and mm.op_type == "MatMul" and value is not None and value.ndim == 1:
                    bias, x = value.astype(np.float32), add.input[i]
                    break
        stripped.append(x)
        biases.append(bias)
    if all(b is None for b in biases):
        return xs, ""
    widths = [g.shapes.get(x, [None])[-1] for x in stripped]
    if any(not isinstance(w, int) for w in widths):
        return xs, ""
    packed = np.concatenate([b if b is not None else np.zeros(w, np.float32) for b, w in zip(biases, widths)])
    if any(b is not None and b.shape[0] != w for b, w in zip(biases, widths)):
        return xs, ""
    return tuple(stripped), g.add_const(f"{base}/qkv_bias", packed)


def _pack_projections(g: _Graph, base: str, xs: tuple[str, str, str]) -> None:
    """Projections of one input by constant weights (q, k, v of self-attention; k, v of
    cross-attention) become one MatMul over the concatenated weights and a Split that
    writes the old tensor names: one wider GEMM instead of two or three narrow ones."""
    from onnx import helper

    groups: dict[str, list[Any]] = defaultdict(list)
    for x in dict.fromkeys(xs):  # q, k, v may repeat (k is v): pack each tensor once
        mm = g.producer.get(x)
        if mm is None or mm.op_type != "MatMul" or id(mm) in g.replacements:
            continue
        w = g.const(mm.input[1])
        if w is None or w.ndim != 2 or w.dtype != np.float32:
            continue
        groups[mm.input[0]].append((mm, w))
    for source, members in groups.items():
        if len(members) < 2 or len({w.shape[0] for _, w in members}) != 1:
            continue
        members.sort(key=lambda m: g.order[id(m[0])])  # the packed MatMul takes the first's place
        weight = g.add_const(f"{base}/packed_weight", np.concatenate([w for _, w in members], axis=1))
        sizes = g.add_const(f"{base}/packed_sizes", np.array([w.shape[1] for _, w in members], np.int64))
        packed = f"{base}/packed"
        first, *rest = (mm for mm, _ in members)
        g.replace_node(
            first,
            helper.make_node("MatMul", [source, weight], [packed], name=f"{base}/packed_MatMul"),
            helper.make_node("Split", [packed, sizes], [mm.output[0] for mm, _ in members],
                             name=f"{base}/packed_Split", axis=-1),
        )
        for mm in rest:
            g.replace_node(mm)
        g.packed += 1


def _rewrite_attention(g: _Graph, a: _Attention) -> list[Any]:
    """The nodes that replace `a.out_mm` (the rest of the old subgraph becomes dead).

    Two forms. Heads: q, k and v are the usual split of (B,S,H·hd) tensors into heads, so
    those tensors go to MultiHeadAttention as they are, with num_heads=H, and its
    (B,S,H·hd) output replaces the merge of heads after the attention. Rows: anything
    else (SAM's (B·H,S,hd) tensors, a score bias): the leading dims are flattened into
    MultiHeadAttention's batch, with one head.
    """
    from onnx import helper

    base = g.fresh("vitron_fused_attention")
    nodes: list[Any] = []
    out = a.out_mm.output[0]
    heads = [_split_heads(g, x) for x in (a.q, a.k, a.v)] if a.bias is None and g.rank(a.q) == 4 else [None]
    if all(h is not None for h in heads) and len({(h[1], h[2]) for h in heads}) == 1:
        (xq, h, hd), (xk, _, _), (xv, _, _) = heads
        (xq, xk, xv), bias = _fold_projection_biases(g, base, (xq, xk, xv))
        _pack_projections(g, base, (xq, xk, xv))
        merged = f"{base}/out"
        nodes.append(
            helper.make_node(
                "MultiHeadAttention", [xq, xk, xv, bias], [merged], name=f"{base}/MultiHeadAttention",
                domain=MS_DOMAIN, num_heads=h, scale=float(a.scale),
            )
        )
        split_shape = g.add_const(f"{base}/split_shape", np.array([0, 0, h, hd], np.int64))
        users = g.consumers.get(out, [])
        merge = users[0] if len(users) == 1 and out not in g.outputs else None
        if merge is not None and merge.op_type == "Transpose" and list(_attr(merge, "perm", [])) == [0, 2, 1, 3]:
            # o.transpose(1, 2) -> (B,S,H,hd): a view of MultiHeadAttention's output.
            g.replace_node(
                merge,
                helper.make_node("Reshape", [merged, split_shape], list(merge.output), name=f"{base}/merge_Reshape"),
            )
            return nodes
        split = f"{base}/out_split"
        nodes.append(helper.make_node("Reshape", [merged, split_shape], [split], name=f"{base}/out_Reshape"))
        nodes.append(helper.make_node("Transpose", [split], [out], name=f"{base}/out_Transpose", perm=[0, 2, 1, 3]))
        return nodes

    minus_one = g.add_const(f"{base}/minus_one", np.array([-1], np.int64))

    def flat3(x: str, tag: str) -> str:
        """(…,S,hd) -> (-1,S,hd): a view when x is contiguous."""
        if g.rank(x) == 3:
            return x
        tail, shape, flat = f"{base}/{tag}_tail", f"{base}/{tag}_shape3", f"{base}/{tag}3"
        nodes.append(helper.make_node("Shape", [x], [tail], name=f"{base}/{tag}_Shape", start=-2))
        nodes.append(helper.make_node("Concat", [minus_one, tail], [shape], name=f"{base}/{tag}_Concat", axis=0))
        nodes.append(helper.make_node("Reshape", [x, shape], [flat], name=f"{base}/{tag}_Reshape"))
        return flat

    q3, k3, v3 = flat3(a.q, "q"), flat3(a.k, "k"), flat3(a.v, "v")
    bias4 = ""
    if a.bias is not None:
        tail, shape, bias4 = f"{base}/bias_tail", f"{base}/bias_shape4", f"{base}/bias4"
        one = g.add_const(f"{base}/one", np.array([1], np.int64))
        nodes.append(helper.make_node("Shape", [a.bias], [tail], name=f"{base}/bias_Shape", start=-2))
        nodes.append(
            helper.make_node("Concat", [minus_one, one, tail], [shape], name=f"{base}/bias_Concat", axis=0)
        )
        nodes.append(helper.make_node("Reshape", [a.bias, shape], [bias4], name=f"{base}/bias_Reshape"))
    out3 = f"{base}/out3"
    nodes.append(
        helper.make_node(
            "MultiHeadAttention", [q3, k3, v3, "", "", bias4], [out3], name=f"{base}/MultiHeadAttention",
            domain=MS_DOMAIN, num_heads=1, scale=float(a.scale),
        )
    )
    if g.rank(a.q) == 3:
        nodes.append(helper.make_node("Identity", [out3], [out], name=f"{base}/out"))
        return nodes
    # o (…,S,hdv): q's leading dims and S, v's head size.
    head, vtail, shape = f"{base}/o_head", f"{base}/o_vtail", f"{base}/o_shape"
    nodes.append(helper.make_node("Shape", [a.q], [head], name=f"{base}/o_Shape", end=-1))
    nodes.append(helper.make_node("Shape", [a.v], [vtail], name=f"{base}/o_vShape", start=-1))
    nodes.append(helper.make_node("Concat", [head, vtail], [shape], name=f"{base}/o_Concat", axis=0))
    nodes.append(helper.make_node("Reshape", [out3, shape], [out], name=f"{base}/o_Reshape"))
    return nodes


def fuse_attention(model: Any, report: FusionReport) -> None:
    """Pass 1 on `model` (an onnx ModelProto, changed in place)."""
    g = _Graph(model.graph)
    # A softmax whose probabilities reach no MatMul weighs nothing (a UNet layout's map over
    # the grid): not attention, so not reported as attention left unfused.
    softmaxes = [
        n
        for n in g.nodes
        if n.op_type == "Softmax" and any(u.op_type == "MatMul" for u in g.consumers.get(n.output[0], []))
    ]
    fused = 0
    for sm in softmaxes:
        try:
            match = _match_attention(g, sm)
        except _Skip as why:
            report.skipped_attention[str(why)] = report.skipped_attention.get(str(why), 0) + 1
            continue
        g.replace_node(match.out_mm, *_rewrite_attention(g, match))
        fused += 1
    if not fused:
        return
    new_nodes = []
    for node in g.nodes:
        new_nodes.extend(g.replacements.get(id(node), [node]))
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    _remove_dead_nodes(model.graph)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        from onnx import helper

        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    report.fused["MultiHeadAttention"] = report.fused.get("MultiHeadAttention", 0) + fused
    if g.packed:
        report.fused["packed projections"] = report.fused.get("packed projections", 0) + g.packed


def _remove_dead_nodes(graph: Any) -> None:
    """Drop nodes none of whose outputs reach a graph output (from the end backwards)."""
    live = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in live for o in node.output):
            keep.append(node)
            live.update(i for i in node.input if i)
            for a in node.attribute:  # subgraphs read outer names
                if a.type == a.GRAPH:
                    live.update(_outer_inputs(a.g))
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input}
    kept_inits = [t for t in graph.initializer if t.name in used or t.name in {o.name for o in graph.output}]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)


def _outer_inputs(graph: Any) -> set[str]:
    return {i for n in graph.node for i in n.input}


# --------------------------------------------------------------------------- pass 2: ORT's optimizer


def _ort_transformer_pass(model: Any, report: FusionReport) -> None:
    """Erf-GELU -> Gelu, then bias Add + Gelu -> BiasGelu: two of onnxruntime's transformer
    fusions, applied one by one. Its full "bert" pipeline is not used: its
    SkipLayerNormalization fusion writes nodes the CPU kernel refuses for rank-4 inputs
    (SAM's (B,H,W,C) blocks), and on rank-3 ones measured slower here than the
    LayerNormalization + Add it replaces."""
    from onnxruntime.transformers.fusion_biasgelu import FusionBiasGelu
    from onnxruntime.transformers.fusion_gelu import FusionGelu
    from onnxruntime.transformers.onnx_model import OnnxModel

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    wrapped = OnnxModel(model)
    for fusion in (FusionGelu(wrapped), FusionBiasGelu(wrapped, is_fastgelu=False)):
        fusion.apply()
        added = Counter(n.op_type for n in fusion.nodes_to_add)
        if added[fusion.fused_op_type]:
            report.fused[fusion.fused_op_type] = report.fused.get(fusion.fused_op_type, 0) + added[fusion.fused_op_type]
    wrapped.topological_sort()


# --------------------------------------------------------------------------- entry points


def fuse_model(model: Any) -> tuple[Any, FusionReport]:
    """Both passes on an onnx ModelProto (with its weights loaded), in place; returns the
    model and the report."""
    report = FusionReport()
    fuse_attention(model, report)
    _ort_transformer_pass(model, report)
    return model, report


def _has_candidates(model: Any) -> bool:
    """Whether either pass can fuse anything, judged on the graph alone (no weights read):
    an attention subgraph pass 1 matches, or an Erf for the GELU fusions."""
    if any(n.op_type == "Erf" for n in model.graph.node):
        return True
    g = _Graph(model.graph)
    for sm in (n for n in g.nodes if n.op_type == "Softmax"):
        try:
            _match_attention(g, sm)
            return True
        except _Skip:
            continue
    return False


def fuse_file(src: str | Path, dst: str | Path) -> FusionReport:
    """Fuse the ONNX file `src` into `dst`, weights above `EXTERNAL_DATA_ABOVE` bytes in
    `<dst>.data` beside it. When the graph has nothing to fuse nothing is written (and no
    weights are read): `report.written` is False and `src` is the graph to run."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src), load_external_data=False)
    if not _has_candidates(model):
        return FusionReport()
    load_external_data_for_model(model, str(src.parent))
    model, report = fuse_model(model)
    weight_bytes = sum(t.ByteSize() for t in model.graph.initializer)
    data = dst.with_name(dst.name + ".data")
    data.unlink(missing_ok=True)
    if weight_bytes > EXTERNAL_DATA_ABOVE:
        onnx.save_model(
            model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
            location=data.name, size_threshold=1024,
        )
    else:
        onnx.save_model(model, str(dst))
    report.written = True
    log.info("fused %s: %s", src.name, report.summary())
    return report
