"""The peers vitron-rt is measured against, on the same weights and the same thread count:

  EagerLlm      transformers' LlamaForCausalLM under torch.no_grad with its DynamicCache,
                greedy, timed as bench/llm.py defines (the PyTorch reference the bundle
                was exported from, rebuilt from the manifest's source)
  GenaiLlm      onnxruntime-genai on a model its own model builder made from the same
                Hugging Face folder (fp32 and int4), cached on disk between runs

Both return `GenerationSample`s, so every engine's numbers come from one definition.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from vitron_rt.bench.llm import GenerationSample

GENAI_PACKAGE = "onnxruntime-genai"
DEFAULT_CACHE = Path(os.environ.get("VITRON_RT_CACHE", Path.home() / ".cache" / "vitron-rt")) / "bench"


class PeerUnavailable(RuntimeError):
    """A peer that cannot run here; the message says why (the report prints it)."""


class EagerLlm:
    """Greedy generation with the PyTorch reference decoder (`models.llm.LlmDecoder`)."""

    def __init__(self, decoder: Any, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = decoder.model.eval()  # LlamaForCausalLM
        # transformers 5.x renamed `past_key_values` to `cache` (the old name warns).
        params = inspect.signature(self.model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"

    def generate(self, ids: list[int], new_tokens: int) -> GenerationSample:
        torch = self.torch
        from transformers import DynamicCache

        tokens: list[int] = []
        with torch.no_grad():
            t0 = time.perf_counter()
            cache = DynamicCache()
            out = self.model(input_ids=torch.tensor([ids]), use_cache=True, **{self.cache_kw: cache})
            token = int(out.logits[0, -1].argmax())
            tokens.append(token)
            t1 = time.perf_counter()
            while len(tokens) < new_tokens:
                out = self.model(input_ids=torch.tensor([[token]]), use_cache=True, **{self.cache_kw: cache})
                token = int(out.logits[0, -1].argmax())
                tokens.append(token)
            t2 = time.perf_counter()
        return GenerationSample(tokens, (t1 - t0) * 1e3, (t2 - t1) * 1e3)

    def prefill_ms(self, length: int, vocab: int, seed: int = 0) -> float:
        """One prefill of `length` seeded random ids (time depends on the shape only)."""
        torch = self.torch
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, vocab, (1, length), generator=g)
        with torch.no_grad():
            t0 = time.perf_counter()
            out = self.model(input_ids=ids, use_cache=True)
            int(out.logits[0, -1].argmax())
            return (time.perf_counter() - t0) * 1e3


def genai_available() -> str | None:
    """None when onnxruntime-genai imports, else why not."""
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError as e:
        return f"{GENAI_PACKAGE} is not installed (pip install {GENAI_PACKAGE}): {e}"
    return None


def hf_folder_for(checkpoint: str | Path, cache: Path = DEFAULT_CACHE) -> Path:
    """A Hugging Face folder (config, safetensors, tokenizer) of an LLM checkpoint, which is
    what onnxruntime-genai's builder reads: the folder itself, or a GGUF file converted
    once with transformers (dequantised to fp32, as vitron-rt's export loads it) and kept
    under `cache` keyed by the file's path, size and mtime."""
    path = Path(checkpoint)
    if path.is_dir():
        return path
    if path.suffix.lower() != ".gguf":
        raise PeerUnavailable(f"{path}: onnxruntime-genai's builder needs a Hugging Face folder or a GGUF file")
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    out = cache / "hf" / f"{path.stem}-{key}"
    if (out / "config.json").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(out.name + ".partial")
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    # transformers refuses to save a model it loaded from GGUF; the weights are plain fp32
    # tensors by now, so a fresh model of the same config takes them and saves.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out


def build_genai(hf_dir: Path, precision: str, cache: Path = DEFAULT_CACHE) -> Path:
    """onnxruntime-genai's model builder run on `hf_dir` for the CPU at `precision`
    (fp32 or int4), in a subprocess; cached by folder, precision and genai version."""
    import onnxruntime_genai as og

    key = hashlib.sha256(f"{hf_dir.resolve()}:{precision}:{og.__version__}".encode()).hexdigest()[:16]
    out = cache / "genai" / f"{hf_dir.name}-{precision}-{key}"
    if (out / "genai_config.json").exists():
        return out
    tmp = out.with_name(out.name + ".partial")
    cmd = [
        sys.executable, "-m", "onnxruntime_genai.models.builder",
        "-i", str(hf_dir), "-o", str(tmp), "-p", precision, "-e", "cpu",
        "-c", str(cache / "genai" / "hf-cache"),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not (tmp / "genai_config.json").exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise PeerUnavailable(f"onnxruntime-genai's builder failed ({precision}): {' | '.join(tail)}")
    tmp.rename(out)
    return out


class GenaiLlm:
    """Greedy generation on onnxruntime-genai. `append_tokens` runs the prefill; each
    `generate_next_token` runs the previous token (none for the first) and picks one, so
    the timing splits as vitron-rt's does."""

    def __init__(self, model_dir: Path, threads: int):
        import onnxruntime_genai as og

        self.og = og
        config_path = model_dir / "genai_config.json"
        config = json.loads(config_path.read_text())
        options = config["model"]["decoder"].setdefault("session_options", {})
        if options.get("intra_op_num_threads") != threads:
            options["intra_op_num_threads"] = threads
            options["inter_op_num_threads"] = 1
            config_path.write_text(json.dumps(config, indent=4))
        self.model = og.Model(str(model_dir))
        self.model_dir = model_dir

    def generate(self, ids: list[int], new_tokens: int) -> GenerationSample:
        og = self.og
        params = og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=len(ids) + new_tokens)
        generator = og.Generator(self.model, params)
        tokens: list[int] = []
        t0 = time.perf_counter()
        generator.append_tokens(ids)
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
        t1 = time.perf_counter()
        while len(tokens) < new_tokens and not generator.is_done():
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
        t2 = time.perf_counter()
        return GenerationSample(tokens, (t1 - t0) * 1e3, (t2 - t1) * 1e3)
