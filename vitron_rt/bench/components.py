"""The compute-bound components, PyTorch eager against vitron-rt's ONNX Runtime runner, fp32,
on the same weights, the same inputs and the same thread count, in one process.

    component           timed input (batch 1)                  sizes
    vision_encoder      pixel_values                           tiny | CLIP ViT-B/16 @224
    seg_image_encoder   pixel_values                           tiny | SAM ViT-B @512
    seg_mask_decoder    embeddings + box + K signal tokens     tiny | SAM ViT-B's decoder, 64x64
                        + previous mask                               embeddings (1024 px)
    unet                latents, t, 77-token context           tiny | SD-1.x, channels halved,
                                                                      48x48 latents (384 px)

"tiny" is the bundle's own component (its files, run the way the runtime runs them, against
the reference rebuilt from its manifest), or, without a bundle, the tiny preset's. The
realistic sizes are built from `models/config.py` configs with seeded random weights (no
checkpoint ships here), exported once through the project's own spec and export path,
checked against PyTorch on the spec's validation shapes through the same runner the timing
uses, and cached on disk under a key of everything that produced them, so a second run
exports nothing. REALISTIC says what each one is and why.

Timing: warm-up calls, then rounds of one eager call and one ONNX Runtime call (interleaved,
so load from other processes falls on both alike); median / p90 / p99 from bench/stats.
`speedup` is eager's median over ONNX Runtime's; `speedup_pairs` the median of the per-round
ratios, the steadier figure on a shared machine.

FLOPs are counted from the standard ONNX graph (the main file, before kernel fusion) with
the timed input shapes: 2 per multiply-add of every MatMul, Gemm, Conv, ConvTranspose and
Einsum, shapes from ONNX Runtime's symbolic shape inference. Elementwise work is not
counted. PyTorch's own forward may do more (CLIP's runs the layers after the selected one,
which the exported graph drops); the count is of the work the output needs. `pct_of_gemm`
sets the achieved rate against `stats.gemm_rate`, measured in the same run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitron_rt.bench.stats import Timing, gemm_rate, measure

COMPONENTS: tuple[str, ...] = ("vision_encoder", "seg_image_encoder", "seg_mask_decoder", "unet")
SIZES: tuple[str, ...] = ("tiny", "realistic")
DEFAULT_CACHE = Path(os.environ.get("VITRON_RT_CACHE", Path.home() / ".cache" / "vitron-rt")) / "bench" / "components"
# Timed rounds (after warm-up) by size: a realistic round takes seconds.
REPEAT = {"tiny": 20, "realistic": 6}
WARMUP = {"tiny": 3, "realistic": 1}
SEED = 0
# Bumped when the way realistic modules are built changes (part of the cache key).
BUILD_VERSION = 1
FLOP_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum")


# --------------------------------------------------------------------------- what is measured


@dataclass(frozen=True)
class Realistic:
    """A realistic-size component: what it is, why this size, and its config."""

    description: str
    why: str
    config: Any  # a models/config.py dataclass

    def key(self, component: str) -> str:
        """Everything that produced the export: component, config, seed, build and tool versions."""
        import onnx
        import torch

        from vitron_rt import __version__

        blob = json.dumps(
            {
                "component": component,
                "config": dataclasses.asdict(self.config),
                "seed": SEED,
                "build": BUILD_VERSION,
                "tools": [__version__, torch.__version__, onnx.__version__],
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _realistic() -> dict[str, Realistic]:
    from vitron_rt.models.config import SegConfig, UNetConfig, VisionConfig

    return {
        "vision_encoder": Realistic(
            "CLIP ViT-B/16 @224 (197 tokens; 11 of 12 layers in the graph: features are layer -2's)",
            "the common CLIP tower; Vitron's ViT-L/14 is the same graph 3.6x wider in FLOPs",
            VisionConfig(
                image_size=224, patch_size=16, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072
            ),
        ),
        "seg_image_encoder": Realistic(
            "SAM ViT-B image encoder @512 (32x32 tokens, 14x14 windows, 4 global layers)",
            "SAM's 1024 input is 4x the tokens (~1 TFLOP, ~10 s a call here): too slow for a bench "
            "that must finish in minutes; 512 keeps every op of the 1024 graph",
            SegConfig(image_size=512),
        ),
        "seg_mask_decoder": Realistic(
            "SAM ViT-B mask decoder at its real size (64x64 embeddings of a 1024 px image)",
            "the decoder is small; this is exactly SAM's",
            SegConfig(),
        ),
        "unet": Realistic(
            "SD-1.x UNet, channels halved (160, 320, 640, 640), 4 heads (SD-1.x's head sizes 40/80/160), "
            "48x48 latents (384 px), 77-token context, batch 1",
            "SD-1.x itself is ~0.8 TFLOP a step at 64x64 latents (~8 s here); halving the channels quarters "
            "the convolutions and keeps SD-1.x's blocks, layers and head sizes, and 48x48 latents bring a "
            "step to ~1 s of eager on a quiet machine (64x64 at half width is 233 GFLOP, ~3 s)",
            UNetConfig(sample_size=48, block_out_channels=(160, 320, 640, 640), attention_head_dim=4),
        ),
    }


REALISTIC_DESCRIPTIONS = {name: r.description for name, r in _realistic().items()}


def _timed_dims(name: str, module: Any, spec: Any, cfg_signal_tokens: int, context: int | None) -> dict[str, int]:
    """The timed shape: the export shape at batch 1 (and a text-length UNet context, K
    signal tokens for the mask decoder)."""
    dims = {**spec.resolve(module).export, "batch": 1}
    if name == "seg_mask_decoder":
        dims["signal_tokens"] = cfg_signal_tokens
    if name == "unet" and context is not None:
        dims["context"] = context
    return dims


# --------------------------------------------------------------------------- building


@contextlib.contextmanager
def _seeded(part: str):
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED * 1_000_003 + zlib.crc32(part.encode()))
        yield


def _perturb_vectors(module: Any, part: str) -> None:
    """Seeded noise on every 1-D parameter (biases, norm scales and shifts): the libraries
    initialise them to 0 and 1, which would let a fusion that drops a bias or a norm's
    affine pass a parity check."""
    import torch

    g = torch.Generator().manual_seed(zlib.crc32(f"perturb:{part}".encode()))
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def build_realistic(name: str) -> Any:
    """The realistic-size module of `name`, seeded (the same weights every call)."""
    from vitron_rt.models.diffusion import UNet
    from vitron_rt.models.segmentation import SegImageEncoder, SegMaskDecoder, build_sam
    from vitron_rt.models.vision import VisionEncoder

    cfg = _realistic()[name].config
    with _seeded(name):
        if name == "vision_encoder":
            module = VisionEncoder(cfg)
        elif name == "seg_image_encoder":
            module = SegImageEncoder(build_sam(cfg))
        elif name == "seg_mask_decoder":
            module = SegMaskDecoder(build_sam(cfg))
        elif name == "unet":
            module = UNet(cfg)
        else:
            raise KeyError(f"no realistic size for {name!r}; known: {', '.join(COMPONENTS)}")
    _perturb_vectors(module, name)
    return module.eval()


def _tiny_modules(names: Sequence[str]) -> tuple[dict[str, Any], Any]:
    from vitron_rt.models.config import preset
    from vitron_rt.models.model import VitronModel

    cfg = preset("tiny")
    model = VitronModel.from_config(cfg)
    return {n: model.component(n) for n in names}, cfg


# --------------------------------------------------------------------------- the ONNX side


def _ort_options(threads: int):
    from vitron_rt.engines import OrtOptions

    return OrtOptions(intra_op_threads=threads, inter_op_threads=1)


@dataclass
class _Prepared:
    """One component ready to time: module, spec, the ONNX runner factory, provenance."""

    name: str
    size: str
    description: str
    module: Any
    spec: Any
    runner: Callable[..., Any]  # runner(options) -> an inactive OrtRunner
    onnx_path: Path
    export_s: float | None  # None: the export came from the cache or the bundle
    validation: list[dict[str, Any]]
    context: int | None
    signal_tokens: int


def _export_cached(name: str, module: Any, spec: Any, folder: Path, threads: int, log: Callable[[str], None]):
    """Export `module` into `folder` once (validated on the spec's shapes through the same
    runner the bench times), or reuse it. Returns (onnx path, export seconds or None,
    validation rows as dicts)."""
    from vitron_rt.engines import OrtRunner
    from vitron_rt.export.onnx_export import export_component
    from vitron_rt.export.validate import validate_file

    meta_path = folder / "export.json"
    onnx_path = folder / f"{spec.name}.onnx"
    if meta_path.is_file() and onnx_path.is_file():
        meta = json.loads(meta_path.read_text())
        return onnx_path, None, meta.get("validation", [])
    staging = folder.with_name(folder.name + f".{os.getpid()}.tmp")
    if staging.exists():
        import shutil

        shutil.rmtree(staging)
    log(f"  exporting {name} into {folder} ...")
    t0 = time.perf_counter()
    exported = export_component(module, spec, staging)
    export_s = time.perf_counter() - t0
    engines = staging / "engines" / "ort"

    def runner(path: Path) -> Any:
        return OrtRunner(path, name=name, options=_ort_options(threads), cache_dir=engines)

    rows = validate_file(module, spec, exported.path, runner=runner)  # ToleranceError on a miss
    validation = [_row_dict(r) for r in rows]
    validate_s = time.perf_counter() - t0 - export_s
    meta = {"export_s": round(export_s, 1), "validate_s": round(validate_s, 1), "validation": validation}
    (staging / "export.json").write_text(json.dumps(meta, indent=2) + "\n")
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    os.replace(staging, folder)
    log(f"  exported {name} in {export_s:.0f} s, validated in {validate_s:.0f} s")
    return onnx_path, export_s, validation


def _row_dict(row: Any) -> dict[str, Any]:
    return {
        "output": row.output,
        "case": row.case,
        "max_abs_err": float(f"{row.max_abs_err:.3g}"),
        "max_rel_err": float(f"{row.max_rel_err:.3g}"),
        "passed": bool(row.passed),
    }


def _prepare_realistic(names: Sequence[str], cache: Path, threads: int, log) -> list[_Prepared]:
    import vitron_rt.export.specs  # noqa: F401  (registers the specs)
    from vitron_rt.engines import OrtRunner
    from vitron_rt.export.spec import get_spec

    out = []
    table = _realistic()
    for name in names:
        real = table[name]
        module = build_realistic(name)
        spec = get_spec(name).bind(module)
        folder = cache / f"{name}-{real.key(name)}"
        path, export_s, validation = _export_cached(name, module, spec, folder, threads, log)
        engines = folder / "engines" / "ort"

        def runner(options, path=path, name=name, engines=engines):
            return OrtRunner(path, name=name, options=options, cache_dir=engines)

        context = getattr(real.config, "context_length", None) if name == "unet" else None
        out.append(_Prepared(name, "realistic", real.description, module, spec, runner, path, export_s,
                             validation, context, signal_tokens=4))  # fmt: skip
    return out


def _prepare_tiny(names: Sequence[str], bundle_dir: Path | None, cache: Path, threads: int, log) -> list[_Prepared]:
    import vitron_rt.export.specs  # noqa: F401  (registers the specs)
    from vitron_rt.engines import OrtRunner, make_runner
    from vitron_rt.export.spec import get_spec

    out = []
    if bundle_dir is not None:
        from vitron_rt.bundle import load_bundle
        from vitron_rt.models.source import from_source

        bundle = load_bundle(bundle_dir)
        ref = from_source(bundle.manifest.source)
        cfg = ref.config
        for name in names:
            if name not in bundle.manifest.components or name not in ref.components:
                continue
            module = ref.components[name].eval()
            spec = get_spec(name).bind(module)

            def runner(options, name=name):
                return make_runner(bundle, name, "ort", options)

            out.append(_Prepared(name, cfg.name, f"{cfg.name} preset, the bundle's file", module, spec, runner,
                                 bundle.component_path(name), None, [], cfg.unet.context_length,
                                 cfg.signal.num_tokens))  # fmt: skip
        return out
    modules, cfg = _tiny_modules(names)
    for name in names:
        module = modules[name]
        spec = get_spec(name).bind(module)
        key = hashlib.sha256(json.dumps({"c": name, "cfg": cfg.to_dict()}, sort_keys=True).encode()).hexdigest()[:16]
        folder = cache / f"{name}-tiny-{key}"
        path, export_s, validation = _export_cached(name, module, spec, folder, threads, log)
        engines = folder / "engines" / "ort"

        def runner(options, path=path, name=name, engines=engines):
            return OrtRunner(path, name=name, options=options, cache_dir=engines)

        out.append(_Prepared(name, "tiny", "tiny preset", module, spec, runner, path, export_s, validation,
                             cfg.unet.context_length, cfg.signal.num_tokens))  # fmt: skip
    return out


# --------------------------------------------------------------------------- FLOPs


def graph_flops(path: str | Path, input_shapes: dict[str, tuple[int, ...]]) -> int:
    """FLOPs (2 per multiply-add) of the MatMul / Gemm / Conv / ConvTranspose / Einsum nodes
    of an ONNX graph at the given input shapes. Shapes of every tensor come from ONNX
    Runtime's symbolic shape inference (the dynamo exporter's reshapes defeat onnx's)."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = onnx.load(str(path), load_external_data=False)
    g = model.graph
    for v in g.input:
        if v.name in input_shapes:
            dims = v.type.tensor_type.shape.dim
            for d, size in zip(dims, input_shapes[v.name]):
                d.Clear()
                d.dim_value = int(size)
    del g.value_info[:]
    for o in g.output:
        o.type.tensor_type.ClearField("shape")
    inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    shapes: dict[str, list[int | None]] = {t.name: list(t.dims) for t in inferred.graph.initializer}
    for v in (*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info):
        t = v.type.tensor_type
        if t.HasField("shape"):
            shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    total = 0
    for node in inferred.graph.node:
        if node.op_type not in FLOP_OPS:
            continue
        flops = _node_flops(node, shapes)
        if flops is None:
            raise ValueError(f"{Path(path).name}: no static shape for {node.op_type} {node.name!r}")
        total += flops
    return total


def _node_flops(node: Any, shapes: dict[str, list[int | None]]) -> int | None:
    def known(name: str) -> list[int] | None:
        s = shapes.get(name)
        return None if s is None or any(d is None for d in s) else s

    out = known(node.output[0])
    if node.op_type == "MatMul":
        a = known(node.input[0])
        return None if a is None or out is None else 2 * int(np.prod(out)) * a[-1]
    if node.op_type == "Gemm":
        a = known(node.input[0])
        trans_a = next((x.i for x in node.attribute if x.name == "transA"), 0)
        return None if a is None or out is None else 2 * int(np.prod(out)) * (a[0] if trans_a else a[1])
    if node.op_type == "Conv":
        w = known(node.input[1])
        return None if w is None or out is None else 2 * int(np.prod(out)) * int(np.prod(w[1:]))
    if node.op_type == "ConvTranspose":
        x, w = known(node.input[0]), known(node.input[1])
        return None if x is None or w is None else 2 * int(np.prod(x)) * int(np.prod(w[1:]))
    # Einsum: 2 x the product of every index's size (each output element sums over the rest).
    equation = next(x.s for x in node.attribute if x.name == "equation").decode().replace(" ", "")
    sizes: dict[str, int] = {}
    for term, name in zip(equation.split("->")[0].split(","), node.input):
        s = known(name)
        if s is None or "." in term:
            return None
        sizes.update(zip(term, s))
    return 2 * int(np.prod(list(sizes.values())))


# --------------------------------------------------------------------------- timing


def _timing_dict(t: Timing) -> dict[str, Any]:
    return t.to_dict()


def _interleaved(fns: dict[str, Callable[[], object]], warmup: int, repeat: int) -> dict[str, Timing]:
    """Warm each up, then `repeat` rounds of one call each, in order."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    timings = {k: Timing() for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            timings[k].samples_ms += measure(fn, warmup=0, repeat=1).samples_ms
    return timings


def _bench_one(p: _Prepared, threads: int, gemm: float, warmup: int, repeat: int, compare_unfused: bool) -> dict:
    import torch

    from vitron_rt.export.validate import compare

    dims = _timed_dims(p.name, p.module, p.spec, p.signal_tokens, p.context)
    feeds = p.spec.make_inputs(p.module, dims)
    np_feeds = {k: np.ascontiguousarray(v.detach().cpu().numpy()) for k, v in feeds.items()}
    flops = graph_flops(p.onnx_path, {k: v.shape for k, v in np_feeds.items()})

    def eager():
        with torch.no_grad():
            return p.spec.run(p.module, feeds)

    options = _ort_options(threads)
    with contextlib.ExitStack() as stack:
        fused = stack.enter_context(p.runner(options))
        fns = {"eager": eager, "ort": lambda: fused.infer(np_feeds)}
        if compare_unfused:
            plain = stack.enter_context(p.runner(dataclasses.replace(options, fuse=False)))
            fns["ort_unfused"] = lambda: plain.infer(np_feeds)
        with torch.no_grad():
            ref = [t.detach().cpu().numpy() for t in p.spec.run(p.module, feeds)]
        got = fused.infer(np_feeds)
        timings = _interleaved(fns, warmup, repeat)
        fusion = fused.fusion
    parity = []
    for io, r in zip(p.spec.outputs, ref):
        tol = p.spec.tolerance(io.name)
        c = compare(r, np.asarray(got[io.name]), tol)
        parity.append({"output": io.name, "max_abs_err": float(f"{c.max_abs_err:.3g}"),
                       "max_rel_err": float(f"{c.max_rel_err:.3g}"), "ref_max_abs": float(f"{np.abs(r).max():.3g}"),
                       "atol": tol.atol, "rtol": tol.rtol, "passed": bool(c.passed)})  # fmt: skip
    e, o = timings["eager"], timings["ort"]
    pairs = [a / b for a, b in zip(e.samples_ms, o.samples_ms)]
    row: dict[str, Any] = {
        "component": p.name,
        "size": p.size,
        "description": p.description,
        "dims": dims,
        "eager_ms": round(e.median, 2),
        "ort_ms": round(o.median, 2),
        "speedup": round(e.median / o.median, 3),
        "speedup_pairs": round(float(np.median(pairs)), 3),
        "flops": flops,
        "gflop": round(flops / 1e9, 3),
        "ort_gflop_s": round(flops / o.median / 1e6, 1),
        "pct_of_gemm": round(100 * flops / o.median / 1e6 / gemm, 1),
        "eager_pct_of_gemm": round(100 * flops / e.median / 1e6 / gemm, 1),
        "max_abs_err": max(x["max_abs_err"] for x in parity),
        "parity_passed": all(x["passed"] for x in parity),
        "parity": parity,
        "eager": _timing_dict(e),
        "ort": _timing_dict(o),
        "fusion": None if fusion is None else {"fused": fusion.fused, "skipped_attention": fusion.skipped_attention},
        "export_s": None if p.export_s is None else round(p.export_s, 1),
        "export_validation": p.validation,
        "threads": threads,
    }
    if compare_unfused:
        u = timings["ort_unfused"]
        row["ort_unfused_ms"] = round(u.median, 2)
        row["speedup_unfused"] = round(e.median / u.median, 3)
        row["ort_unfused"] = _timing_dict(u)
    return row


def bench_components(
    bundle_dir: str | Path | None = None,
    sizes: Sequence[str] = SIZES,
    threads: int = 2,
    *,
    components: Sequence[str] = COMPONENTS,
    warmup: int | None = None,
    repeat: int | None = None,
    compare_unfused: bool = False,
    cache_dir: str | Path | None = None,
    gemm_gflop_s: float | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> list[dict[str, Any]]:
    """One row per component and size (see the module docstring): eager and ONNX Runtime
    ms (median, p90, p99), `speedup`, FLOPs, % of the GEMM rate, parity with PyTorch on the
    timed inputs under the spec's tolerances, what kernel fusion did, and the export's time
    (None when it came from the cache or the bundle). `compare_unfused` also times the
    graph without kernel fusion (`ort_unfused_ms`). `gemm_gflop_s`: a GEMM rate measured
    already, else measured here with `threads`."""
    import torch

    unknown = [s for s in sizes if s not in SIZES] + [c for c in components if c not in COMPONENTS]
    if unknown:
        raise ValueError(f"unknown size or component {unknown[0]!r}; sizes {SIZES}, components {COMPONENTS}")
    cache = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE
    bundle = Path(bundle_dir) if bundle_dir is not None else None
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gemm = gemm_gflop_s or gemm_rate(threads)[0]
        rows = []
        for size in sizes:
            if size == "tiny":
                prepared = _prepare_tiny(components, bundle, cache, threads, log)
            else:
                prepared = _prepare_realistic(components, cache, threads, log)
            for p in prepared:
                w = WARMUP[size] if warmup is None else warmup
                r = REPEAT[size] if repeat is None else repeat
                log(f"  timing {p.name} ({p.size}) ...")
                row = _bench_one(p, threads, gemm, w, r, compare_unfused)
                row["gemm_gflop_s"] = round(gemm, 1)
                row["loadavg_1m"] = round(os.getloadavg()[0], 2)
                rows.append(row)
                log(f"  {p.name:<18} {p.size:<9} eager {row['eager_ms']:9.1f} ms  ort {row['ort_ms']:9.1f} ms  "
                    f"x{row['speedup']:.2f}  {row['pct_of_gemm']:.0f}% of GEMM  max err {row['max_abs_err']:.2g}")  # fmt: skip
        return rows
    finally:
        torch.set_num_threads(previous)
