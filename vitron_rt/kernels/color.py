"""NV12 (what hardware video decoders hand out) to RGB, in numpy: the integer arithmetic
the preprocess kernel does per source pixel it reads.

NV12 is one buffer of H + H/2 rows: the full-resolution Y plane, then one plane of
interleaved U, V samples at half resolution in both directions (each pair serves a 2 x 2
block of pixels). The conversion is OpenCV's `cvtColor(..., COLOR_YUV2RGB_NV12)`: BT.601
limited range with 20-bit fixed-point coefficients and nearest (not interpolated)
chroma. It is bit-exact with OpenCV 5.0; the tests hold it to a tolerance of 0 levels.

    R = (1220542 (Y - 16) + 1673527 (V - 128)                   + 2^19) >> 20
    G = (1220542 (Y - 16) -  852492 (V - 128) - 409993 (U - 128) + 2^19) >> 20
    B = (1220542 (Y - 16)                     + 2116026 (U - 128) + 2^19) >> 20
    (Y - 16 floored at 0; each result saturated to 0..255)
"""

from __future__ import annotations

import numpy as np

# OpenCV's ITUR_BT_601_* constants (color_yuv.simd.hpp), the same in preprocess.cu.
CY, CVR, CVG, CUG, CUB, SHIFT = 1220542, 1673527, -852492, -409993, 2116026, 20


def split_nv12(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An NV12 frame as decoders give it, (H * 3 / 2, W) uint8, -> its Y plane (H, W) and
    its interleaved UV plane (H / 2, W). H and W must be even (as OpenCV requires)."""
    if not isinstance(buf, np.ndarray) or buf.dtype != np.uint8 or buf.ndim != 2:
        got = f"{buf.dtype} {buf.shape}" if isinstance(buf, np.ndarray) else type(buf).__name__
        raise ValueError(f"an NV12 frame is one (H * 3 / 2, W) uint8 plane, got {got}")
    rows, width = buf.shape
    if rows == 0 or rows % 3 or width % 2 or width == 0 or (2 * rows // 3) % 2:
        raise ValueError(f"an NV12 frame needs an even width and height, got a {width} x {rows} buffer")
    height = 2 * rows // 3
    return buf[:height], buf[height:]


def nv12_shape(height: int, width: int) -> tuple[int, int]:
    """The (rows, width) of an NV12 buffer holding an H x W frame."""
    if height % 2 or width % 2 or height < 2 or width < 2:
        raise ValueError(f"NV12 frames have even, positive sides, got {width} x {height}")
    return height * 3 // 2, width


def nv12_to_rgb(buf: np.ndarray) -> np.ndarray:
    """(H * 3 / 2, W) NV12 uint8 -> (H, W, 3) uint8 RGB, as `cv2.cvtColor(buf,
    cv2.COLOR_YUV2RGB_NV12)`, with the kernel's integer formula."""
    y, uv = split_nv12(buf)
    h, w = y.shape
    u = uv[:, 0::2].astype(np.int64) - 128  # (H/2, W/2)
    v = uv[:, 1::2].astype(np.int64) - 128
    u = np.repeat(np.repeat(u, 2, axis=0), 2, axis=1)[:h, :w]  # nearest chroma: (H, W)
    v = np.repeat(np.repeat(v, 2, axis=0), 2, axis=1)[:h, :w]
    yy = np.maximum(y.astype(np.int64) - 16, 0) * CY
    half = 1 << (SHIFT - 1)
    r = (yy + half + CVR * v) >> SHIFT
    g = (yy + half + CVG * v + CUG * u) >> SHIFT
    b = (yy + half + CUB * u) >> SHIFT
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)
