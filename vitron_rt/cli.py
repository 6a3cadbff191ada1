"""`vitron-rt`: one command, a subcommand per stage (export, check, build, run, bench,
serve, demo, and the mini model's train-mini and eval-mini).

Every subcommand parses its own options here and imports its stage lazily, so `--help`
and the runtime subcommands never pay for torch. Errors a user can cause end as one line
on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from vitron_rt.logs import quiet_libraries

EXIT_USAGE = 2  # argparse's code for bad usage; also "this stage cannot run here"


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status `code`."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def _not_built(stage: str, issue: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        raise CliError(f"vitron-rt {stage}: not built yet ({issue})", code=EXIT_USAGE)

    handler.not_built = True
    return handler


# --- option groups reused across subcommands -------------------------------------------


def _add_bundle(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", metavar="B", help="bundle folder written by `vitron-rt export`")


def _add_engine(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine",
        choices=("ort", "trt"),
        default="ort",
        help="ort: ONNX Runtime (CPU, the default); trt: TensorRT (needs a GPU and the gpu extra)",
    )


# --- subcommands -----------------------------------------------------------------------


def _export(args: argparse.Namespace) -> int:
    import time

    from vitron_rt.bundle import BundleError
    from vitron_rt.export.errors import ExportError, ValidationError
    from vitron_rt.export.pipeline import export_bundle
    from vitron_rt.models.source import SourceError, from_checkpoints, from_preset
    from vitron_rt.models.weights import CheckpointError

    quiet_libraries()  # after the imports above: importing torch resets its loggers
    t0 = time.perf_counter()
    try:
        if args.preset:
            if args.llm or args.checkpoint or args.vision:
                raise SourceError("--preset takes no --llm, --checkpoint or --vision: a preset brings its own weights")
            ref = from_preset(args.preset)
        else:
            ref = from_checkpoints(llm=args.llm, checkpoint=args.checkpoint, vision=args.vision)
        print(f"exporting {len(ref.components)} components to {args.out}", file=sys.stderr)
        path, rows = export_bundle(
            ref, args.out, overwrite=args.overwrite, log=lambda m: print(m, file=sys.stderr), quant=args.quant or ()
        )
    except (SourceError, CheckpointError, BundleError, ExportError, ValidationError, ValueError, OSError) as e:
        raise CliError(f"vitron-rt export: {_one_line(e)}") from None
    print(f"wrote {path} ({len(rows)} checks passed, {time.perf_counter() - t0:.0f} s)")
    return 0


def _check(args: argparse.Namespace) -> int:
    from vitron_rt.bundle import BundleError, load_bundle

    if args.engine == "trt":
        _require_trt("check")
    try:
        bundle = load_bundle(args.bundle)
    except BundleError as e:
        raise CliError(f"vitron-rt check: {_one_line(e)}") from None
    from vitron_rt.engines import EngineError, MissingDependencyError, runner_factory
    from vitron_rt.export.errors import ExportError, ValidationError
    from vitron_rt.export.pipeline import check_bundle
    from vitron_rt.models.source import SourceError
    from vitron_rt.export.validate import format_table
    from vitron_rt.models.weights import CheckpointError

    quiet_libraries()
    try:
        rows = check_bundle(bundle, runner=runner_factory(bundle, args.engine))
    except MissingDependencyError as e:
        raise CliError(f"vitron-rt check: {_one_line(e)}", code=EXIT_USAGE) from None
    except (
        SourceError,
        CheckpointError,
        ExportError,
        ValidationError,
        EngineError,
        BundleError,
        KeyError,
        ValueError,
    ) as e:
        raise CliError(f"vitron-rt check: {_one_line(e)}") from None
    print(format_table(rows))
    failed = [r for r in rows if not r.passed]
    if failed:
        print(f"vitron-rt check: {len(failed)} of {len(rows)} checks failed", file=sys.stderr)
        for r in failed:
            print(f"  {r.component} {r.output} ({r.case}): {r.result.detail}", file=sys.stderr)
        return 1
    print(f"all {len(rows)} checks passed")
    return 0


def _require_trt(stage: str) -> None:
    """TensorRT, Polygraphy, cuda-python and a GPU, or one line naming what is missing (exit 2)."""
    from vitron_rt.engines.deps import require_polygraphy, require_trt_stack
    from vitron_rt.engines.errors import MissingDependencyError

    try:
        require_trt_stack()
        require_polygraphy()
    except MissingDependencyError as e:
        raise CliError(f"vitron-rt {stage}: {_one_line(e)}", code=EXIT_USAGE) from None


def _build(args: argparse.Namespace) -> int:
    """--engine trt: one TensorRT engine per component, keyed and cached in the bundle's
    engines/. --engine ort: ONNX Runtime's optimized model of each component, cached there
    too, so the first request does not pay for graph optimization."""
    import time

    from vitron_rt.bundle import BundleError, load_bundle

    if args.engine == "trt":
        _require_trt("build")
    elif args.precision:
        raise CliError(
            f"vitron-rt build: --{args.precision} is a TensorRT precision; add --engine trt", code=EXIT_USAGE
        )
    try:
        bundle = load_bundle(args.bundle)
    except BundleError as e:
        raise CliError(f"vitron-rt build: {_one_line(e)}") from None
    from vitron_rt.engines import EngineError, MissingDependencyError, make_runner

    def log(message: str) -> None:
        print(message, file=sys.stderr)

    t0 = time.perf_counter()
    try:
        if args.engine == "trt":
            from vitron_rt.engines.trt_build import BuildOptions, Precision, build_engines

            built = build_engines(bundle, BuildOptions(precision=Precision(args.precision or "fp32")), log=log)
            count = len(built)
        else:
            count = 0
            for name in bundle.manifest.components:
                with make_runner(bundle, name, "ort") as runner:
                    log(f"  {name:<34} {'reused' if runner.cache_hit else 'optimized'}: {runner.model_path.name}")
                count += 1
    except MissingDependencyError as e:
        raise CliError(f"vitron-rt build: {_one_line(e)}", code=EXIT_USAGE) from None
    except (EngineError, BundleError, OSError) as e:
        raise CliError(f"vitron-rt build: {_one_line(e)}") from None
    what = "TensorRT engines" if args.engine == "trt" else "ONNX Runtime optimized models"
    print(f"{count} {what} in {bundle.engines_dir} ({time.perf_counter() - t0:.1f} s)")
    return 0


def _diffusion_options(args: argparse.Namespace):
    """`run`'s diffusion flags as `DiffusionOptions` (None when none is given); a bad value
    is the options' own `VitronInputError`."""
    given = {"num_inference_steps": args.steps, "guidance_scale": args.guidance_scale, "strength": args.strength}
    given = {k: v for k, v in given.items() if v is not None}
    if not given:
        return None
    from vitron_rt.runtime.pipelines import DiffusionOptions

    return DiffusionOptions(**given)


def _run(args: argparse.Namespace) -> int:
    """One request: stream the reply to stdout (a timing line on stderr after it), or
    with --json print one object. Bad input is one line on stderr and exit 1."""
    import json

    from vitron_rt.bundle import BundleError
    from vitron_rt.engines import EngineError, MissingDependencyError
    from vitron_rt.runtime.errors import VitronInputError
    from vitron_rt.runtime.region import validate_region
    from vitron_rt.runtime.sampling import SamplingParams
    from vitron_rt.runtime.session import Session

    if args.engine == "trt":
        _require_trt("run")

    def stream(delta: str) -> None:
        sys.stdout.write(delta)
        sys.stdout.flush()

    try:
        region = None
        if args.region is not None:
            parts = args.region.split(",")
            try:
                values = [float(p) for p in parts]
            except ValueError:
                values = parts
            region = validate_region(values)
        sampling = SamplingParams(greedy=args.greedy, max_new_tokens=args.max_new_tokens, seed=args.seed)
        with Session(args.bundle, engine=args.engine, quant=args.quant, diffusion=_diffusion_options(args)) as session:
            result = session.run(
                args.prompt,
                image=args.image,
                video=args.video,
                region=region,
                task=args.task,
                sampling=sampling,
                out_dir=args.out,
                on_text=None if args.json else stream,
            )
    except MissingDependencyError as e:
        raise CliError(f"vitron-rt run: {_one_line(e)}", code=EXIT_USAGE) from None
    except (VitronInputError, BundleError, EngineError, OSError) as e:
        if not args.json:
            sys.stdout.flush()
        raise CliError(f"vitron-rt run: {_one_line(e)}") from None
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
        return 0
    print()
    t, usage = result.timings_ms, result.usage
    rate = (usage.completion_tokens - 1) / (t["decode"] / 1e3) if t["decode"] > 0 else 0.0
    print(
        f"prefill {t['prefill']:.0f} ms ({usage.prompt_tokens} tokens), decode {t['decode']:.0f} ms "
        f"({usage.completion_tokens} tokens, {rate:.1f} tok/s), {result.finish_reason}",
        file=sys.stderr,
    )
    if result.message is not None:
        print(f"message: {json.dumps(result.message.to_dict(), ensure_ascii=False)}", file=sys.stderr)
    for out in result.outputs:
        print(f"{out.kind}: {out.path}", file=sys.stderr)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from vitron_rt.demo import main as demo_main

    if args.eval_images < 0 or args.eval_videos < 0:
        raise CliError("vitron-rt demo: --eval-images and --eval-videos must be >= 0", code=EXIT_USAGE)
    return demo_main(args.out, args.preset, args.seed, args.eval_images, args.eval_videos)


def _eval_mini(args: argparse.Namespace) -> int:
    """The accuracy table of the mini preset: export its bundle if needed, run the held-out
    ShapesWorld set through ONNX Runtime and the PyTorch reference, print the Markdown
    table (progress on stderr), and write it as JSON / Markdown when asked."""
    from pathlib import Path

    try:
        import torch  # noqa: F401
    except ModuleNotFoundError:
        raise CliError("vitron-rt eval-mini: torch is not installed (the PyTorch reference); "
                       "pip install 'vitron-rt[export]'", code=EXIT_USAGE) from None  # fmt: skip
    from vitron_rt.bundle import BundleError
    from vitron_rt.demo import DemoError, ensure_bundle
    from vitron_rt.engines import EngineError
    from vitron_rt.runtime.errors import VitronInputError
    from vitron_rt.runtime.session import Session
    from vitron_rt.shapes.evaluate import Evaluation, EvalOptions, render_markdown, write_report
    from vitron_rt.shapes.reference import ReferenceSession

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        given = {"images": args.images, "videos": args.videos, "seed": args.seed}
        options = EvalOptions(**{k: v for k, v in given.items() if v is not None})
    except ValueError as e:
        raise CliError(f"vitron-rt eval-mini: {_one_line(e)}", code=EXIT_USAGE) from None
    quiet_libraries()
    try:
        bundle, ref = ensure_bundle(Path(args.bundle), "mini", log)
        with Session(bundle) as session, ReferenceSession(bundle, ref) as reference:
            report = Evaluation(session, reference, options, log=log).run()
        write_report(report, Path(args.json) if args.json else None, Path(args.markdown) if args.markdown else None)
    except (DemoError, BundleError, EngineError, VitronInputError, OSError) as e:
        raise CliError(f"vitron-rt eval-mini: {_one_line(e)}") from None
    print(render_markdown(report), end="")
    return 0


def _train_mini(args: argparse.Namespace) -> int:
    """`python -m vitron_rt.train.mini` under the one command: its options are its own
    (`vitron-rt train-mini --help` prints them)."""
    try:
        from vitron_rt.train.mini import main as train_main
    except ModuleNotFoundError as e:
        raise CliError(f"vitron-rt train-mini: {e.name} is not installed; pip install 'vitron-rt[export]'",
                       code=EXIT_USAGE) from None  # fmt: skip
    return train_main(args.forwarded)


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return " ".join(text.split())


def _configure_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="a preset's own weights: mini (trained on ShapesWorld, shipped) or tiny (seeded random)")
    p.add_argument(
        "--llm",
        metavar="PATH",
        help="LLM weights (HF folder, .safetensors or .gguf): a text-only bundle, or with "
        "--checkpoint the base model under its LoRA",
    )
    p.add_argument("--checkpoint", metavar="DIR", help="a Vitron / LLaVA checkpoint folder")
    p.add_argument("--vision", metavar="PATH", help="vision tower (CLIP) folder, when not in the checkpoint")
    p.add_argument("--out", required=True, metavar="B", help="bundle folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    p.add_argument(
        "--quant",
        action="append",
        choices=("int4", "int8"),
        help="also write the decoder with quantised weights (ONNX Runtime MatMulNBits; repeatable); "
        "checked by token agreement with fp32, served only by `run --quant`",
    )


def _configure_run(p: argparse.ArgumentParser) -> None:
    _add_bundle(p)
    p.add_argument("--prompt", required=True)
    media = p.add_mutually_exclusive_group()
    media.add_argument("--image", metavar="F")
    media.add_argument("--video", metavar="F")
    p.add_argument("--region", metavar="x1,y1,x2,y2", help="normalised box in [0,1]")
    p.add_argument(
        "--task",
        default="auto",
        metavar="TASK",
        help="auto (follow the model's message), understand, segment, generate, edit, or a module "
        "name (segment_video, ...); an unknown one is a one-line error",
    )
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--greedy", action="store_true")
    p.add_argument("--seed", type=int, metavar="S", help="seed of the token sampling and of the UNet's noise")
    diffusion = p.add_argument_group("diffusion back ends (generate, edit)")
    diffusion.add_argument(
        "--steps", type=int, metavar="N", help="DDIM steps (default 20; an edit runs the last --strength of them)"
    )
    diffusion.add_argument("--guidance-scale", type=float, metavar="G", help="classifier-free guidance (default 1)")
    diffusion.add_argument(
        "--strength",
        type=float,
        metavar="S",
        help="how far an edit noises its input, in (0, 1] (default 1: redrawn inside the mask)",
    )
    _add_engine(p)
    p.add_argument(
        "--quant",
        choices=("fp32", "int4", "int8"),
        default="fp32",
        help="decoder weights: fp32 (default) or a quantised variant the bundle was exported with (--quant)",
    )
    p.add_argument("--out", metavar="DIR", help="folder for the outputs (masks, images, video)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _configure_build(p: argparse.ArgumentParser) -> None:
    _add_bundle(p)
    _add_engine(p)
    prec = p.add_mutually_exclusive_group()
    prec.add_argument("--fp16", action="store_const", const="fp16", dest="precision")
    prec.add_argument("--int8", action="store_const", const="int8", dest="precision")


def _configure_check(p: argparse.ArgumentParser) -> None:
    _add_bundle(p)
    _add_engine(p)


def _bench(args: argparse.Namespace) -> int:
    """Benchmark a bundle. Prints the Markdown report unless only --json is asked for
    (then it is quiet: the JSON file is the output)."""
    import json
    from pathlib import Path

    from vitron_rt.bundle import BundleError

    try:
        import torch  # noqa: F401
    except ModuleNotFoundError:
        raise CliError("vitron-rt bench: torch is not installed (the PyTorch peer); pip install 'vitron-rt[bench]'",
                       code=EXIT_USAGE) from None  # fmt: skip
    from vitron_rt.bench.report import render_markdown, write_plots
    from vitron_rt.bench.run import BenchOptions, Progress, run_bench
    from vitron_rt.demo import DemoError

    if args.repeats < 1 or args.threads < 1 or args.max_new_tokens < 2:
        raise CliError("vitron-rt bench: --repeats and --threads must be >= 1, --max-new-tokens >= 2", code=EXIT_USAGE)
    quiet = bool(args.json) and not args.report
    sections = tuple(s for s in BenchOptions().sections if s not in (args.skip or []))
    opts = BenchOptions(
        threads=args.threads,
        repeats=args.repeats,
        new_tokens=args.max_new_tokens,
        peers=not args.no_peers,
        realistic=args.realistic,
        sections=sections,
    )
    report = Path(args.report) if args.report else None
    json_path = Path(args.json) if args.json else None
    for path in (json_path.parent if json_path else None, report):
        if path is not None:
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise CliError(f"vitron-rt bench: cannot write to {path}: {e.strerror}") from None
    progress = Progress() if quiet else _bench_progress()
    quiet_libraries()
    try:
        result = run_bench(args.bundle, opts, progress)
    except (BundleError, DemoError, OSError) as e:  # DemoError: the sample image / video is not installed
        raise CliError(f"vitron-rt bench: {_one_line(e)}") from None
    finally:
        close = getattr(progress, "close", None)
        if close:
            close()
    if report is not None:
        result["plots"] = [str(p) for p in write_plots(result, report)]
        (report / "bench.md").write_text(render_markdown(result))
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2))
    if not quiet:
        print(render_markdown(result))
    return 0


def _bench_progress():
    """A spinner line per section on stderr (rich), or plain lines without rich."""
    from vitron_rt.bench.run import Progress

    try:
        from rich.console import Console
    except ModuleNotFoundError:
        return Progress(step=lambda text: print(f"bench: {text}", file=sys.stderr, flush=True))
    console = Console(stderr=True)
    status = console.status("bench: starting")
    status.start()

    def step(text: str) -> None:
        console.log(f"bench: {text}")
        status.update(f"bench: {text}")

    progress = Progress(step=step)
    progress.close = status.stop  # type: ignore[attr-defined]
    return progress


def _configure_bench(p: argparse.ArgumentParser) -> None:
    _add_bundle(p)
    p.add_argument("--json", metavar="FILE", help="write the results as JSON (alone: no other output)")
    p.add_argument("--report", metavar="DIR", help="write bench.md (Markdown tables) and PNG plots there")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for every engine and peer (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats after one warm-up (default 5)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="greedy tokens per generation (default 64)")
    p.add_argument("--no-peers", action="store_true", help="skip PyTorch eager and onnxruntime-genai")
    p.add_argument("--realistic", action="store_true",
                   help="also time the components at a realistic size (exported once, then cached)")
    p.add_argument("--skip", action="append", metavar="SECTION",
                   choices=("llm", "quality", "image_ttft", "tasks", "components", "video", "memory"),
                   help="leave a section out (repeatable)")


def _serve(args: argparse.Namespace) -> int:
    """Serve a bundle until interrupted (Ctrl-C). A bad bundle or option is one line on
    stderr and exit 1; a missing server package names the extra to install (exit 2)."""
    import logging
    from pathlib import Path

    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ModuleNotFoundError as e:
        raise CliError(
            f"vitron-rt serve: {e.name} is not installed; pip install 'vitron-rt[serve]'", code=EXIT_USAGE
        ) from None
    from vitron_rt.bundle import BundleError
    from vitron_rt.engines import EngineError, MissingDependencyError
    from vitron_rt.runtime.errors import VitronInputError
    from vitron_rt.serve.config import MiB, ServeConfig
    from vitron_rt.serve.server import serve

    if args.engine == "trt":
        _require_trt("serve")
    try:
        config = ServeConfig(
            host=args.host,
            port=args.port,
            model_name=args.model_name,
            engine=args.engine,
            queue_depth=args.queue_depth,
            max_per_client=args.max_per_client,
            request_timeout_s=args.timeout,
            max_body_bytes=int(args.max_body_mb * MiB),
            max_connections=args.max_connections,
            media_root=None if args.media_root is None else Path(args.media_root),
            artifact_dir=None if args.artifact_dir is None else Path(args.artifact_dir),
        )
    except ValueError as e:
        raise CliError(f"vitron-rt serve: {_one_line(e)}", code=EXIT_USAGE) from None
    # The server's own log (a request that failed, with its traceback) goes to stderr.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    try:
        serve(args.bundle, config)
    except MissingDependencyError as e:
        raise CliError(f"vitron-rt serve: {_one_line(e)}", code=EXIT_USAGE) from None
    except (VitronInputError, BundleError, EngineError, OSError) as e:
        raise CliError(f"vitron-rt serve: {_one_line(e)}") from None
    return 0


def _configure_serve(p: argparse.ArgumentParser) -> None:
    _add_bundle(p)
    p.add_argument("--host", default="127.0.0.1", help="loopback only by default")
    p.add_argument("--port", type=int, default=8000, help="0: any free port (the address is printed)")
    _add_engine(p)
    p.add_argument("--model-name", metavar="ID", help="the model id clients send (default: the bundle folder's name)")
    p.add_argument("--queue-depth", type=int, default=8, metavar="N",
                   help="requests waiting behind the running one; beyond it: 503 with Retry-After")
    p.add_argument("--max-per-client", type=int, metavar="N",
                   help="requests one client (API key, else address) may have queued or running; beyond it: 429")
    p.add_argument("--timeout", type=float, default=300.0, metavar="S", help="request timeout in seconds")
    p.add_argument("--max-body-mb", type=float, default=20.0, metavar="MB", help="request body limit")
    p.add_argument("--max-connections", type=int, default=100, metavar="N",
                   help="open connections; beyond them the HTTP layer answers 503 (bounds body memory)")
    p.add_argument("--media-root", metavar="DIR",
                   help="the one folder file-path media may be read from (default: none, data: URLs only)")
    p.add_argument("--artifact-dir", metavar="DIR",
                   help="where masks, images and videos are written and served from (default: a temporary folder)")


def _configure_demo(p: argparse.ArgumentParser) -> None:
    from vitron_rt.demo import DEMO_WORLD_SEED, PRESETS, SUMMARY_IMAGES, SUMMARY_VIDEOS

    p.add_argument("--out", metavar="DIR", default="vitron-demo", help="folder for the demo's outputs")
    p.add_argument("--preset", choices=PRESETS, default=PRESETS[0],
                   help="mini: the model trained on ShapesWorld, on fresh ShapesWorld inputs (default); "
                   "tiny: random weights on real photos and video (every stage runs, nothing is learnt)")
    p.add_argument("--seed", type=int, default=DEMO_WORLD_SEED, metavar="S",
                   help=f"ShapesWorld seed of the mini demo's inputs (default {DEMO_WORLD_SEED})")
    p.add_argument("--eval-images", type=int, default=SUMMARY_IMAGES, metavar="N",
                   help=f"images in the mini demo's accuracy summary (default {SUMMARY_IMAGES})")
    p.add_argument("--eval-videos", type=int, default=SUMMARY_VIDEOS, metavar="N",
                   help=f"videos in the mini demo's accuracy summary (default {SUMMARY_VIDEOS})")


def _configure_eval_mini(p: argparse.ArgumentParser) -> None:
    # Defaults live in EvalOptions (None here: not given); the parser stays import-free.
    p.add_argument("--bundle", metavar="B", default="bundle-mini",
                   help="the mini bundle (exported there first if missing or from other weights; default bundle-mini)")
    p.add_argument("--images", type=int, metavar="N", help="held-out images (default 500)")
    p.add_argument("--videos", type=int, metavar="N", help="held-out videos (default 50)")
    p.add_argument("--seed", type=int, metavar="S",
                   help="ShapesWorld seed of the held-out set (default 1; training uses 0)")
    p.add_argument("--json", metavar="F", help="write the report (every row, every sample) as JSON")
    p.add_argument("--markdown", metavar="F", help="write the Markdown table")


def _configure_train_mini(p: argparse.ArgumentParser) -> None:
    p.set_defaults(forwarded=[])


# Subcommands whose arguments go unparsed to another program's parser (`args.forwarded`).
FORWARDING = frozenset({"train-mini"})


# name -> (help line, configure, handler)
SUBCOMMANDS: dict[str, tuple[str, Callable, Callable[[argparse.Namespace], int]]] = {
    "export": (
        "export every component to ONNX and write a bundle",
        _configure_export,
        _export,
    ),
    "check": (
        "check a bundle's components against their PyTorch references",
        _configure_check,
        _check,
    ),
    "build": (
        "build TensorRT engines for a bundle",
        _configure_build,
        _build,
    ),
    "run": (
        "run one request (understand, segment, generate, edit) on a bundle",
        _configure_run,
        _run,
    ),
    "bench": ("benchmark a bundle against PyTorch eager and onnxruntime-genai", _configure_bench, _bench),
    "serve": ("serve a bundle over an OpenAI-compatible HTTP API", _configure_serve, _serve),
    "demo": ("the whole path on the embedded default (ONNX Runtime, CPU)", _configure_demo, _demo),
    "train-mini": ("train the mini model on ShapesWorld from scratch (python -m vitron_rt.train.mini)",
                   _configure_train_mini, _train_mini),
    "eval-mini": ("the mini model's accuracy table on held-out ShapesWorld, ONNX Runtime beside PyTorch",
                  _configure_eval_mini, _eval_mini),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitron-rt",
        description="ONNX / TensorRT edge runtime for Vitron-style pixel-level vision LLMs.",
    )
    from vitron_rt import __version__

    parser.add_argument("--version", action="version", version=f"vitron-rt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name, (help_line, configure, handler) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_line, description=help_line, add_help=name not in FORWARDING)
        configure(p)
        p.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command in FORWARDING:
        args.forwarded = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.handler(args)
    except CliError as e:
        print(str(e), file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("vitron-rt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
