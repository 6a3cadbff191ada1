"""Gather of the signal-token hidden states into the projector's input buffer.

    hidden (B, T, D) ──► rows b * T + positions[b, k] ──► (B, K, D) projector input

The LLM's last hidden states stay on the device; the host knows only where the signal
tokens sit (it decoded the ids), so what crosses is K int32 positions per sequence, and
the kernel copies (and converts fp16 <-> fp32) the K rows straight into the binding the
signal projector reads. The reference is `np.take` plus a dtype cast (fp32 -> fp16
rounds to nearest even, as the kernel's `cvt.rn.f16.f32`).
"""

from __future__ import annotations

import numpy as np

DTYPES = ("float32", "float16")


def signal_rows(positions: np.ndarray, seq_len: int) -> np.ndarray:
    """(B, K) positions in sequences of length T -> (B * K,) int32 rows of the flattened
    (B * T, D) hidden states; a position outside 0..T-1 is an error, not a wrap."""
    pos = np.asarray(positions, dtype=np.int64)
    if pos.ndim == 1:
        pos = pos[None]
    if pos.ndim != 2:
        raise ValueError(f"signal positions must be (B, K), got shape {pos.shape}")
    if pos.size and (pos.min() < 0 or pos.max() >= seq_len):
        raise ValueError(f"signal positions {int(pos.min())}..{int(pos.max())} outside the sequence 0..{seq_len - 1}")
    rows = pos + np.arange(pos.shape[0], dtype=np.int64)[:, None] * seq_len  # (B, K)
    return rows.reshape(-1).astype(np.int32)


def check_gather(src: np.ndarray, rows: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) source and (n,) int32 rows, after checking dtypes and bounds."""
    if dtype not in DTYPES:
        raise ValueError(f"gather dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    a = np.asarray(src)
    if a.dtype.name not in DTYPES or a.ndim != 2:
        raise ValueError(f"gather source must be a 2-D float32 or float16 array, got {a.dtype} {a.shape}")
    r = np.asarray(rows, dtype=np.int64).reshape(-1)
    if r.size and (r.min() < 0 or r.max() >= a.shape[0]):
        raise ValueError(f"gather rows {int(r.min())}..{int(r.max())} outside the source's 0..{a.shape[0] - 1}")
    return a, r.astype(np.int32)


def gather_reference(src: np.ndarray, rows: np.ndarray, dtype: str = "float32") -> np.ndarray:
    """(N, D) -> (n, D) of `dtype`: the rows `rows` of `src`, converted."""
    a, r = check_gather(src, rows, dtype)
    return np.take(a, r, axis=0).astype(dtype)
