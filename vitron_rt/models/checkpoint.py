"""Loading a real LLM checkpoint, with the loader chosen from what the path holds.

    path ─► detect() ─► HF_FOLDER         config.json + *.safetensors / *.bin shards
                     ├► SAFETENSORS_FILE  one .safetensors; config from a sibling config.json
                     │                    or the file's metadata["config"]
                     ├► GGUF_FILE         one .gguf (dequantised to fp32 by transformers)
                     └► VITRON_FOLDER     a LLaVA/Vitron folder: its LLaMA part is loaded here,
                                          the multimodal modules by vitron_checkpoint
         load_llm() ─► LoadedLlm(decoder, tokenizer + Vitron special tokens, config, source)

Supported architectures (decided here, checked before any weight is read): everything
transformers loads as `LlamaForCausalLM` with LLaMA's exact semantics, i.e.
`model_type` "llama" (LLaMA 1-3, Vicuna, SmolLM2, TinyLlama), and "mistral" when it has no
sliding window narrower than its context (then weights and attention are LLaMA's). GGUF
files must have `general.architecture` "llama" (llama.cpp's name for both). Anything else
is a CheckpointError naming the model_type.

Strictness: a missing, unexpected or mis-shaped weight is a CheckpointError listing the
keys (transformers would silently random-initialise a missing one). A corrupt or
truncated file is a CheckpointError with one line, never a traceback from inside a
library. Everything is loaded in float32: the reference is the parity oracle.
"""

from __future__ import annotations

import enum
import json
import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from vitron_rt.models.config import LlmConfig
from vitron_rt.models.llm import LlmDecoder
from vitron_rt.models.tokenizer import PreparedTokenizer, from_transformers
from vitron_rt.models.weights import CheckpointError, assign_strict, read_folder_state_dict, read_state_dict

__all__ = [
    "CheckpointError",
    "CheckpointKind",
    "LoadedLlm",
    "SUPPORTED_MODEL_TYPES",
    "detect",
    "load_llm",
]


class CheckpointKind(str, enum.Enum):
    """What a checkpoint path holds; picks the loader."""

    HF_FOLDER = "hf_folder"
    SAFETENSORS_FILE = "safetensors_file"
    GGUF_FILE = "gguf_file"
    VITRON_FOLDER = "vitron_folder"


# model_type -> what it covers. These load as LlamaForCausalLM with identical results.
SUPPORTED_MODEL_TYPES: dict[str, str] = {
    "llama": "LLaMA 1-3, Vicuna, SmolLM2, TinyLlama",
    "mistral": "Mistral without a sliding window narrower than its context",
}
SUPPORTED_GGUF_ARCHITECTURES = ("llama",)
# A Vitron/LLaVA folder's config is a LlamaConfig plus mm_* keys, under one of these
# model_types (LLaVA's releases write "llava", its code "llava_llama").
VITRON_MODEL_TYPES = ("llama", "llava", "llava_llama", "vitron")
# The LlamaForCausalLM part of a LLaVA-layout state dict; everything else (mm_projector,
# vision_tower, region modules) belongs to the multimodal components.
_LLAMA_PREFIXES = ("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.")


@dataclass
class LoadedLlm:
    """A loaded LLM: the exportable decoder, its prepared tokenizer, its config, and where it came from."""

    decoder: LlmDecoder
    tokenizer: PreparedTokenizer
    config: LlmConfig
    # path, kind, model_type, files, vocab rows before/after the special tokens, and a one-line
    # description; no hashes (the bundle manifest hashes the exported files instead).
    source: dict


# -- detection --------------------------------------------------------------------------------


def _is_vitron_folder(folder: Path) -> bool:
    """vitron_checkpoint's verdict; while that module does not exist yet, nothing is Vitron."""
    try:
        from vitron_rt.models.vitron_checkpoint import is_vitron_folder
    except ImportError:
        if Path(__file__).with_name("vitron_checkpoint.py").exists():
            raise  # the module is there but broken: that is a real error, not "not Vitron"
        return False
    return bool(is_vitron_folder(folder))


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")) or any(folder.glob("*.index.json"))


def detect(path: str | Path) -> CheckpointKind:
    """The kind of checkpoint at `path`, or a CheckpointError saying what is there instead."""
    path = Path(path)
    if path.is_file():
        if path.suffix == ".gguf":
            with path.open("rb") as f:
                magic = f.read(4)
            if magic != b"GGUF":
                raise CheckpointError(f"{path}: not a GGUF file (starts with {magic!r}, want b'GGUF')")
            return CheckpointKind.GGUF_FILE
        if path.suffix == ".safetensors":
            return CheckpointKind.SAFETENSORS_FILE
        raise CheckpointError(
            f"{path}: unsupported checkpoint file {path.suffix!r}; want a .safetensors or .gguf file, "
            "or an HF / Vitron folder"
        )
    if path.is_dir():
        if _is_vitron_folder(path):
            return CheckpointKind.VITRON_FOLDER
        has_config, has_weights = (path / "config.json").is_file(), _has_weights(path)
        if has_config and has_weights:
            return CheckpointKind.HF_FOLDER
        ggufs = sorted(path.glob("*.gguf"))
        if ggufs and not has_weights:
            raise CheckpointError(f"{path}: a folder with GGUF files; pass the file itself, e.g. {ggufs[0]}")
        if has_config:
            raise CheckpointError(f"{path}: has config.json but no .safetensors / .bin weight files")
        raise CheckpointError(f"{path}: not a checkpoint folder (no config.json)")
    raise CheckpointError(f"{path}: no such file or folder")


# -- configs ----------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read JSON ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: holds a JSON {type(data).__name__}, not an object")
    return data


def _check_llama_compatible(cfg: dict, where: object, allowed: tuple[str, ...] | None = None) -> str:
    """The config's model_type, if it is one we load as LLaMA; else a CheckpointError."""
    model_type = str(cfg.get("model_type", ""))
    if model_type not in (allowed or tuple(SUPPORTED_MODEL_TYPES)):
        known = ", ".join(allowed) if allowed else "; ".join(f"{k} ({v})" for k, v in SUPPORTED_MODEL_TYPES.items())
        raise CheckpointError(
            f"{where}: model_type {model_type!r} is not supported; vitron-rt loads LLaMA-family "
            f"decoders that transformers runs as LlamaForCausalLM: {known}"
        )
    window = cfg.get("sliding_window")
    context = cfg.get("max_position_embeddings")
    if window is not None and (context is None or window < context):
        # LlamaForCausalLM has no sliding-window attention; silently dropping it changes outputs.
        raise CheckpointError(
            f"{where}: {model_type} with sliding_window={window} < max_position_embeddings={context} "
            "uses sliding-window attention, which LLaMA does not have"
        )
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
        if key not in cfg:
            raise CheckpointError(f"{where}: config has no {key!r}; not a LLaMA-family decoder config")
    return model_type


def _llama_config(cfg: dict):
    """A transformers LlamaConfig from a LLaMA-compatible config dict (extra keys such as mm_* dropped)."""
    from transformers import LlamaConfig

    known = set(LlamaConfig().to_dict()) | {"rope_scaling", "rope_theta", "head_dim"}
    drop = {"model_type", "architectures", "transformers_version", "auto_map"}
    return LlamaConfig(**{k: v for k, v in cfg.items() if k in known and k not in drop})


# -- GGUF header ------------------------------------------------------------------------------

_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def _gguf_header(path: Path) -> dict:
    """Scalar and string metadata of a GGUF file (arrays skipped), after checking the file is
    as long as its tensor table says. Reads only the header: milliseconds, where parsing the
    vocabulary as transformers does takes seconds."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        pos = 0

        def take(fmt: str):
            nonlocal pos
            values = struct.unpack_from(fmt, buf, pos)
            pos += struct.calcsize(fmt)
            return values[0] if len(values) == 1 else values

        def string() -> str:
            nonlocal pos
            n = take("<Q")
            if pos + n > len(buf):
                raise struct.error("string runs past the end of the file")
            s = bytes(buf[pos : pos + n]).decode("utf-8", errors="replace")
            pos += n
            return s

        def value(vtype: int):
            if vtype in _GGUF_SCALARS:
                return take(_GGUF_SCALARS[vtype])
            if vtype == _GGUF_STRING:
                return string()
            if vtype == _GGUF_ARRAY:
                etype, count = take("<IQ")
                for _ in range(count):  # a vocabulary or merge table: walked, not kept
                    value(etype)
                return None
            raise CheckpointError(f"{path}: corrupt GGUF header (metadata value type {vtype})")

        try:
            magic, version, n_tensors, n_kv = take("<4sIQQ")
            if magic != b"GGUF":
                raise CheckpointError(f"{path}: not a GGUF file (starts with {magic!r})")
            if version not in (2, 3):
                raise CheckpointError(f"{path}: GGUF version {version} is not supported (want 2 or 3)")
            metadata = {}
            for _ in range(n_kv):
                key = string()
                metadata[key] = value(take("<I"))
            end = 0
            for _ in range(n_tensors):
                string()  # tensor name
                dims = take(f"<{take('<I')}Q")
                dims = dims if isinstance(dims, tuple) else (dims,)
                ggml_type, offset = take("<IQ")
                try:
                    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
                except (ValueError, KeyError):
                    raise CheckpointError(f"{path}: unknown GGML tensor type {ggml_type}") from None
                end = max(end, offset + math.prod(dims) // block * type_size)
        except struct.error:
            raise CheckpointError(f"{path}: truncated or corrupt GGUF header") from None
        alignment = metadata.get("general.alignment") or 32
        data_start = (pos + alignment - 1) // alignment * alignment
        if data_start + end > len(buf):
            raise CheckpointError(
                f"{path}: truncated GGUF file: its tensors need {data_start + end} bytes, the file has {len(buf)}"
            )
    return metadata


# -- loaders ----------------------------------------------------------------------------------


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def _mismatch_error(where: object, missing, unexpected, misshaped) -> CheckpointError | None:
    def show(keys) -> str:
        keys = sorted(keys)
        more = f" ... (+{len(keys) - 12} more)" if len(keys) > 12 else ""
        return ", ".join(keys[:12]) + more

    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {show(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {show(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped {len(misshaped)}: {show(misshaped)}")
    if not problems:
        return None
    return CheckpointError(f"{where}: keys do not match the model; " + "; ".join(problems))


def _from_pretrained(folder: Path, where: object, **kwargs):
    """LlamaForCausalLM.from_pretrained in fp32, offline, with every loading problem an error."""
    from transformers import LlamaForCausalLM

    try:
        model, info = LlamaForCausalLM.from_pretrained(
            str(folder),
            dtype=torch.float32,
            local_files_only=True,
            output_loading_info=True,
            ignore_mismatched_sizes=True,  # reported by the info below, with the key names
            **kwargs,
        )
    except Exception as e:  # corrupt shards etc. surface as many library errors
        raise CheckpointError(f"{where}: cannot load weights ({_one_line(e)})") from None
    misshaped = [f"{k} {tuple(a)} != {tuple(b)}" for k, a, b in info.get("mismatched_keys", ())]
    err = _mismatch_error(where, info.get("missing_keys", ()), info.get("unexpected_keys", ()), misshaped)
    if err is None and info.get("error_msgs"):
        err = CheckpointError(f"{where}: cannot load weights ({'; '.join(map(str, info['error_msgs']))})")
    if err is not None:
        raise err
    return model


def _from_state_dict(hf_config, state_dict: dict[str, torch.Tensor], where: object):
    """A LlamaForCausalLM of `hf_config` holding exactly `state_dict` (strict)."""
    from transformers import LlamaForCausalLM
    from transformers.initialization import no_init_weights

    with no_init_weights():  # every weight is assigned below; skip the random init
        model = LlamaForCausalLM(hf_config)
    model.tie_weights()  # init_weights, skipped above, is what ties a tied head
    assign_strict(model, state_dict, str(where))
    return model.to(torch.float32).eval()


def _tokenizer_from_folder(folder: Path, where: object, **kwargs):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, **kwargs)
    except Exception as e:
        raise CheckpointError(
            f"{where}: cannot load the tokenizer ({_one_line(e)}); it needs tokenizer.json "
            "(and tokenizer_config.json for the special tokens and chat template)"
        ) from None


def _tokenizer_beside(file: Path, cfg: dict):
    """The tokenizer that sits next to a single weight file."""
    folder = file.parent
    if (folder / "tokenizer_config.json").is_file():
        return _tokenizer_from_folder(folder, file)
    if (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer
        from transformers import PreTrainedTokenizerFast

        try:
            tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as e:
            raise CheckpointError(f"{folder / 'tokenizer.json'}: cannot read ({_one_line(e)})") from None

        def token(key: str) -> str | None:
            tid = cfg.get(key)
            return tok.id_to_token(tid) if isinstance(tid, int) else None

        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token=token("bos_token_id"), eos_token=token("eos_token_id")
        )
    raise CheckpointError(
        f"{file}: no tokenizer; put tokenizer.json (and optionally tokenizer_config.json) next to it"
    )


def _load_hf_folder(folder: Path):
    cfg = _read_json(folder / "config.json")
    model_type = _check_llama_compatible(cfg, folder)
    tok = _tokenizer_from_folder(folder, folder)
    model = _from_pretrained(folder, folder, config=_llama_config(cfg))
    return model, tok, model_type, [p.name for p in sorted(folder.iterdir()) if p.is_file()]


def _load_safetensors_file(file: Path):
    sibling = file.parent / "config.json"
    if sibling.is_file():
        cfg = _read_json(sibling)
    else:
        from safetensors import safe_open

        try:
            with safe_open(str(file), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as e:
            raise CheckpointError(f"{file}: cannot read weights ({_one_line(e)})") from None
        if "config" not in meta:
            raise CheckpointError(
                f"{file}: no config; put config.json next to it, or store the config JSON "
                "in the file's metadata under 'config'"
            )
        try:
            cfg = json.loads(meta["config"])
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{file}: metadata 'config' is not JSON ({e})") from None
    model_type = _check_llama_compatible(cfg, file)
    tok = _tokenizer_beside(file, cfg)
    model = _from_state_dict(_llama_config(cfg), read_state_dict(file), file)
    siblings = ("config.json", "tokenizer.json", "tokenizer_config.json")
    files = [file.name] + [n for n in siblings if (file.parent / n).is_file()]
    return model, tok, model_type, files


def _load_gguf_file(file: Path):
    from transformers import AutoTokenizer

    meta = _gguf_header(file)
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise CheckpointError(
            f"{file}: GGUF architecture {arch!r} is not supported; supported: {', '.join(SUPPORTED_GGUF_ARCHITECTURES)}"
        )
    try:
        tok = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name, local_files_only=True)
    except Exception as e:
        raise CheckpointError(f"{file}: cannot read the GGUF tokenizer ({_one_line(e)})") from None
    model = _from_pretrained(file.parent, file, gguf_file=file.name)
    return model, tok, arch, [file.name]


def _load_vitron_folder(folder: Path):
    """The LLaMA part of a LLaVA/Vitron folder; the multimodal keys are left to vitron_checkpoint."""
    cfg = _read_json(folder / "config.json")
    model_type = _check_llama_compatible(cfg, folder, allowed=VITRON_MODEL_TYPES)
    tok = _tokenizer_from_folder(folder, folder)
    state = read_folder_state_dict(folder)
    llama = {k: v for k, v in state.items() if k.startswith(_LLAMA_PREFIXES)}
    model = _from_state_dict(_llama_config(cfg), llama, folder)
    return model, tok, model_type, [p.name for p in sorted(folder.iterdir()) if p.is_file()]


_LOADERS = {
    CheckpointKind.HF_FOLDER: _load_hf_folder,
    CheckpointKind.SAFETENSORS_FILE: _load_safetensors_file,
    CheckpointKind.GGUF_FILE: _load_gguf_file,
    CheckpointKind.VITRON_FOLDER: _load_vitron_folder,
}


# -- vocabulary growth ------------------------------------------------------------------------


@torch.no_grad()
def _grow_vocab(model, rows: int) -> None:
    """Grow the embedding (and an untied head) to `rows`, new rows = mean of the old ones.

    Deterministic (no random init, the global RNG is untouched). A new head row scores the
    mean of the existing logits, never above their max, so greedy decoding of ordinary
    text is unchanged. The embedding module is kept (its weight replaced), so anything
    already holding it sees the new table.
    """
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    tied = head.weight is emb.weight
    old = emb.weight.shape[0]
    extra = rows - old
    emb.weight = torch.nn.Parameter(torch.cat([emb.weight, emb.weight.mean(0, keepdim=True).expand(extra, -1)]))
    emb.num_embeddings = rows
    if tied:
        head.weight = emb.weight
    else:
        head.weight = torch.nn.Parameter(
            torch.cat([head.weight, head.weight.mean(0, keepdim=True).expand(extra, -1)])  # (V', D)
        )
    head.out_features = rows
    model.config.vocab_size = rows
    model.vocab_size = rows
    model.model.vocab_size = rows


# -- entry point ------------------------------------------------------------------------------


def load_llm(path: str | Path, num_signal_tokens: int, chat_template: str | None = None) -> LoadedLlm:
    """Load the LLM at `path` (any CheckpointKind) in fp32, with Vitron's special tokens added.

    `chat_template` overrides the tokenizer's own template (a name from
    tokenizer.CHAT_TEMPLATES, e.g. "vicuna_v1", or Jinja text). When the special tokens
    grow the vocabulary, the embedding (and an untied head) grows with mean rows.
    """
    path = Path(path)
    kind = detect(path)
    model, hf_tok, model_type, files = _LOADERS[kind](path)

    # The parity oracle is fp32; a loader that kept packed (quantised) weights would break it.
    dtypes = {t.dtype for t in [*model.parameters(), *model.buffers()]}
    if dtypes != {torch.float32}:
        raise CheckpointError(f"{path}: weights did not load as float32 tensors (got {sorted(map(str, dtypes))})")

    rows = model.get_input_embeddings().weight.shape[0]
    backend = getattr(hf_tok, "backend_tokenizer", None)
    base_ids = backend.get_vocab_size(with_added_tokens=True) if backend is not None else 0
    if base_ids > rows:
        raise CheckpointError(f"{path}: the tokenizer has {base_ids} ids but the embedding only {rows} rows")
    try:
        tokenizer = from_transformers(hf_tok, num_signal_tokens, chat_template=chat_template)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if tokenizer.vocab_size > rows:
        _grow_vocab(model, tokenizer.vocab_size)

    decoder = LlmDecoder(model)
    config = LlmConfig.from_hf(model.config)
    new_rows = model.get_input_embeddings().weight.shape[0]
    source = {
        "path": str(path.resolve()),
        "kind": kind.value,
        "model_type": model_type,
        "files": files,
        "vocab_rows": {"checkpoint": rows, "loaded": new_rows},
        "description": (
            f"{model_type} decoder, {decoder.num_layers} layers, width {decoder.hidden_size}, "
            f"{decoder.num_kv_heads}/{decoder.num_heads} KV/query heads, from {kind.value} {path.name}, "
            f"float32" + (f", vocabulary {rows} -> {new_rows} rows for the special tokens" if new_rows != rows else "")
        ),
    }
    return LoadedLlm(decoder=decoder, tokenizer=tokenizer, config=config, source=source)
