"""The token embedding read from a memory-mapped table instead of an engine.

`embed_tokens` is one Gather over a (V, D) table (export/specs/llm.py), and the export
writes that table as external data: the raw little-endian rows of `embed_tokens.onnx.data`.
Looking tokens up there with numpy gives the engine's result bit for bit (a Gather copies
rows), without an engine session per token and without holding the table: the pages of
the rows a conversation uses are read from the file, the rest never are. On SmolLM2 the
table is 108 MiB, more than its whole int4 decoder.

    MappedTable.from_bundle(bundle, llm)   the table, or None when the bundle's embed_tokens
                                           was written inline (older bundles) or does not
                                           have the layout below; the generator then runs
                                           the engine as before

Layout checked before mapping: the component has exactly one external data file, and it
holds `attributes["table_rows"]` x hidden_size values of the output's dtype, nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vitron_rt.bundle import Bundle, LlmInfo
from vitron_rt.runtime.errors import VitronInputError


class MappedTable:
    """A (V, D) embedding table mapped read-only from its file."""

    def __init__(self, path: str | Path, rows: int, dim: int, dtype: str = "float32"):
        self.path = Path(path)
        self.table = np.memmap(self.path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r", shape=(rows, dim))
        self.rows, self.dim = rows, dim

    @classmethod
    def from_bundle(cls, bundle: Bundle, llm: LlmInfo) -> MappedTable | None:
        entry = bundle.manifest.components.get(llm.embed_component)
        if entry is None or len(entry.external_data) != 1:
            return None
        rows = entry.attributes.get("table_rows")
        out = next((t for t in entry.outputs if t.name == llm.inputs_embeds), None)
        if not isinstance(rows, int) or rows < 1 or out is None:
            return None
        dtype = np.dtype(out.dtype)
        data = entry.external_data[0]
        if data.size != rows * llm.hidden_size * dtype.itemsize:
            return None
        return cls(bundle.path(data), rows, llm.hidden_size, out.dtype)

    def lookup(self, ids: Sequence[int] | np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(T,) ids -> (1, T, D) rows, into `out` when given; an id outside the table is a
        `VitronInputError` (the engine's Gather refuses it too; numpy would wrap a negative one)."""
        idx = np.asarray(ids, dtype=np.int64).reshape(-1)  # (T,)
        if idx.size and (idx.min() < 0 or idx.max() >= self.rows):
            bad = int(idx[(idx < 0) | (idx >= self.rows)][0])
            raise VitronInputError(f"token id {bad} is outside the embedding table (0..{self.rows - 1})")
        if out is None:
            out = np.empty((1, idx.size, self.dim), dtype=self.table.dtype)  # (1, T, D)
        np.take(self.table, idx, axis=0, out=out[0])
        return out
