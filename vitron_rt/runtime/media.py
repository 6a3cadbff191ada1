"""Images and videos in and out, and the encoders' pixel preprocessing (OpenCV + numpy).

Reading: `load_image` / `decode_image` give (H, W, 3) uint8 RGB; `VideoReader` streams a
video's frames (RGB) without holding the video in memory; `sample_frame_indices` picks
frames uniformly as Vitron's video encoder does (LanguageBind: `np.linspace(0, total - 1,
n, dtype=int)`), and `read_frames` decodes just those. A file that is missing, empty,
truncated, corrupt or of an unsupported kind raises `MediaError` with one line saying which.

Preprocessing (`preprocess_image`) turns an image into an encoder's (1, 3, S, S) float32
input, in one of two layouts, matching transformers' image processors exactly (the PIL
backend, which the CLIP and SAM references are usually run with):

    crop (CLIP, the vision encoder)           pad (SAM, the segmentation image encoder)
    shortest side -> S, bicubic                longest side -> S, bilinear
    centre crop S x S                          x / 255, (x - mean) / std
    x / 255, (x - mean) / std                  pad bottom/right to S x S with 0

It runs through `vitron_rt.kernels` (one fused pass: resize, crop or pad, normalise):
on a GPU with cuda-python, the CUDA kernel; elsewhere the CPU path. Both resample as
Pillow's `Image.resize` does for 8-bit images (separable filters widened by the scale
factor when shrinking, i.e. antialiased; fixed-point coefficients; an 8-bit image between
the horizontal and the vertical pass), so the pixels equal what the references see;
OpenCV's INTER_CUBIC does not antialias and would alias on the large downscales (a 12 MP
photo to 224 px) that are the common case here.

Writing: `VideoWriter` and `write_png_atomic` write to a temporary file beside the
target and rename it on success, so a failed request never leaves half a file.
"""

from __future__ import annotations

import enum
import functools
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

from vitron_rt import kernels
from vitron_rt.bundle import ImagePreprocess
from vitron_rt.kernels.preprocess import fit_longest_side, fit_shortest_side  # noqa: F401  (part of this module's API)
from vitron_rt.kernels.resample import PIL_FILTERS, pillow_resize
from vitron_rt.runtime.errors import MediaError

# FFmpeg logs every damaged packet to stderr; a bad file is reported once, as a MediaError.
# OpenCV reads this when it first opens a video; a value the user set is kept.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET


@contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's own warnings about a bad file for the duration of one call."""
    log = cv2.utils.logging
    previous = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        log.setLogLevel(previous)


# --------------------------------------------------------------------------- files


def _check_file(path: str | os.PathLike, what: str) -> Path:
    """The path of an existing, non-empty regular file, or `MediaError`."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise MediaError(f"{p}: no such {what} file") from None
    except OSError as e:
        raise MediaError(f"{p}: cannot read the {what} ({e.strerror or e})") from None
    if p.is_dir():
        raise MediaError(f"{p}: is a folder, not an {what} file")
    if st.st_size == 0:
        raise MediaError(f"{p}: the {what} file is empty (0 bytes)")
    return p


# --------------------------------------------------------------------------- images

IMAGE_FORMATS = "PNG, JPEG, BMP, WebP, TIFF, GIF"


def _image_format(data: bytes) -> str | None:
    """The format named by the file's magic bytes, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "TIFF"
    if data.startswith(b"BM"):
        return "BMP"
    return None


def _truncated(data: bytes, fmt: str | None) -> bool:
    """Whether a PNG or JPEG lacks its end marker (decoders may return a partial image).

    JPEG: the EOI marker FFD9 must follow the last start-of-scan FFDA (neither can occur
    inside entropy-coded data, so a cut file has no EOI after its last scan). PNG: the
    IEND chunk must follow the last IDAT chunk.
    """
    if fmt == "JPEG":
        return data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")
    if fmt == "PNG":
        return data.rfind(b"IEND") < data.rfind(b"IDAT")
    return False


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """Encoded image bytes -> (H, W, 3) uint8 RGB. `name` labels errors (a path, an upload).

    Grey images are expanded to RGB, alpha is dropped (as PIL's `convert("RGB")`), 16-bit
    images are reduced to 8 bits, and EXIF orientation is applied (the image as a viewer
    shows it). Animated GIFs give their first frame.
    """
    if len(data) == 0:
        raise MediaError(f"{name}: the image is empty (0 bytes)")
    fmt = _image_format(data)
    if _truncated(data, fmt):
        raise MediaError(f"{name}: truncated {fmt} file (no end marker)")
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        with _quiet_opencv():
            bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error:
        bgr = None
    if bgr is None:
        if fmt is None:
            raise MediaError(f"{name}: not an image in a supported format ({IMAGE_FORMATS})")
        raise MediaError(f"{name}: corrupt, truncated or unsupported {fmt} file (cannot decode it)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file -> (H, W, 3) uint8 RGB (see `decode_image`)."""
    p = _check_file(path, "image")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise MediaError(f"{p}: cannot read the image ({e.strerror or e})") from None
    return decode_image(data, str(p))


def _check_rgb(img: np.ndarray) -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        got = f"{img.dtype} array of shape {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise MediaError(f"expected an (H, W, 3) uint8 RGB image, got a {got}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise MediaError(f"the image has no pixels (shape {img.shape})")
    return img


# --------------------------------------------------------------------------- preprocessing


def resize(img: np.ndarray, height: int, width: int, kind: str = "bicubic") -> np.ndarray:
    """Resize (H, W, C) uint8 to (height, width, C) with Pillow's `Image.resize`, BICUBIC or
    BILINEAR, as Hugging Face's image processors do."""
    if kind not in PIL_FILTERS:
        raise ValueError(f"resize kind must be one of {', '.join(PIL_FILTERS)}, got {kind!r}")
    if height < 1 or width < 1:
        raise MediaError(f"cannot resize to {width} x {height} pixels")
    return pillow_resize(img, height, width, kind)


class ResizeMode(str, enum.Enum):
    """How an image is fitted to an encoder's S x S input (see the module docstring)."""

    CROP = "crop"  # CLIP: shortest side to S (bicubic), centre crop
    PAD = "pad"  # SAM: longest side to S (bilinear), pad bottom/right


def _kernel_spec(pp: ImagePreprocess, mode: ResizeMode) -> kernels.PreprocessSpec:
    """The fused preprocess that reproduces transformers' processor for `mode`."""
    if len(pp.mean) != 3 or len(pp.std) != 3:
        raise ValueError(f"ImagePreprocess needs 3 means and 3 stds, got {pp.mean} and {pp.std}")
    return _spec(int(pp.image_size), tuple(pp.mean), tuple(pp.std), mode)


@functools.lru_cache(maxsize=16)
def _spec(size: int, mean: tuple, std: tuple, mode: ResizeMode) -> kernels.PreprocessSpec:
    if mode is ResizeMode.CROP:
        filt, fit = kernels.Filter.PIL_BICUBIC, kernels.Fit.CROP
    else:
        filt, fit = kernels.Filter.PIL_BILINEAR, kernels.Fit.PAD  # padding is 0 after normalising
    return kernels.PreprocessSpec(size, mean, std, filt, fit, "float32", 0.0)


def preprocess_image(img: np.ndarray, pp: ImagePreprocess, mode: ResizeMode | str = ResizeMode.CROP) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (1, 3, S, S) float32 encoder input, S = pp.image_size."""
    img = _check_rgb(img)
    spec = _kernel_spec(pp, ResizeMode(mode))
    out = np.empty((1,) + spec.out_shape, dtype=np.float32)
    kernels.preprocess(img, spec, kernels.PixelFormat.RGB, out=out[0])
    return out


def preprocess_images(
    images: Sequence[np.ndarray] | np.ndarray, pp: ImagePreprocess, mode: ResizeMode | str = ResizeMode.CROP
) -> np.ndarray:
    """A batch (e.g. the sampled video frames, (T, H, W, 3)) -> (T, 3, S, S) float32, each
    image written straight into its slot."""
    spec = _kernel_spec(pp, ResizeMode(mode))
    out = np.empty((len(images),) + spec.out_shape, dtype=np.float32)
    for i, im in enumerate(images):
        kernels.preprocess(_check_rgb(im), spec, kernels.PixelFormat.RGB, out=out[i])
    return out


# --------------------------------------------------------------------------- video reading


def sample_frame_indices(n_total: int, n: int) -> np.ndarray:
    """n frame indices spread uniformly over a video of n_total frames, first and last
    included: `np.linspace(0, n_total - 1, n, dtype=int)`, as LanguageBind's (and so
    Vitron's) video processor. Shorter videos repeat frames. (n,) int64."""
    if n_total < 1:
        raise MediaError(f"the video has no frames to sample (frame count {n_total})")
    if n < 1:
        raise ValueError(f"need at least one frame to sample, got {n}")
    return np.linspace(0, n_total - 1, n, dtype=np.int64)


def _mp4_boxes(path: Path) -> list[bytes] | None:
    """Top-level box types of an ISO-BMFF (MP4/MOV) file, reading only box headers; None
    when the file is not one. Tells a download cut before its index from a bad codec."""
    boxes: list[bytes] = []
    size = path.stat().st_size
    with open(path, "rb") as f:
        pos = 0
        while pos + 8 <= size:
            f.seek(pos)
            head = f.read(16)
            n, kind = int.from_bytes(head[:4], "big"), head[4:8]
            if not boxes and kind != b"ftyp":
                return None
            if n == 1 and len(head) == 16:
                n = int.from_bytes(head[8:16], "big")
            elif n == 0:
                n = size - pos
            if n < 8:
                break
            boxes.append(kind)
            pos += n
    return boxes or None


def _unreadable(path: Path) -> str:
    boxes = _mp4_boxes(path)
    if boxes is not None and b"moov" not in boxes:
        return f"{path}: truncated or incomplete MP4 (no 'moov' index box); the file was cut short"
    if boxes is not None:
        return f"{path}: cannot decode this MP4 (unsupported codec or corrupt file)"
    return f"{path}: not a readable video (unsupported format or codec, or a corrupt file)"


# A reported frame count may be an estimate (duration x fps) for some containers; a video
# that ends this many frames early is still taken as whole.
FRAME_COUNT_SLACK = 1
# Gaps between wanted frames longer than this are crossed by seeking, not by decoding
# every frame (a seek decodes from the keyframe before the target: about one GOP).
SEEK_GAP = 64


class VideoReader:
    """A video file's frames, decoded one at a time: iterate for (H, W, 3) uint8 RGB frames.

    Opening checks the file and reads fps, frame count and size (`MediaError` if it cannot
    be opened). Iterating streams from the first frame (each `iter()` starts over) and
    raises `MediaError` if the video ends well before its reported frame count (a cut or
    corrupt file) or yields no frame at all (an undecodable stream). Use as a context
    manager, or call `close()`.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = _check_file(path, "video")
        self._cap = self._open()
        cap = self._cap
        self.fps = float(cap.get(cv2.CAP_PROP_FPS))
        self.width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self._frame_count = count if count > 0 else None
        self._pos = 0  # index of the next frame `_cap` will decode
        if self.width <= 0 or self.height <= 0:
            self.close()
            raise MediaError(f"{self.path}: has no video stream")

    def _open(self) -> cv2.VideoCapture:
        try:
            with _quiet_opencv():
                cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        except cv2.error:
            cap = None
        if cap is None or not cap.isOpened():
            raise MediaError(_unreadable(self.path))
        return cap

    @property
    def frame_count(self) -> int:
        """Frames in the video, as the container reports it (counted by decoding when it
        reports none)."""
        if self._frame_count is None:
            n = 0
            for _ in self:
                n += 1
            self._frame_count = n
        return self._frame_count

    def _restart(self) -> None:
        if self._cap is None:
            raise MediaError(f"{self.path}: the video reader is closed")
        if self._pos != 0:
            self._cap.release()
            self._cap = self._open()
            self._pos = 0

    def _ended_early(self, got: int) -> MediaError:
        if got == 0:
            return MediaError(f"{self.path}: no frame could be decoded (unsupported codec or corrupt video)")
        return MediaError(
            f"{self.path}: the video ends after {got} of {self._frame_count} frames (truncated or corrupt)"
        )

    def __iter__(self) -> Iterator[np.ndarray]:
        self._restart()
        cap = self._cap
        while True:
            with _quiet_opencv():
                ok, frame = cap.read()
            if not ok or frame is None:
                break
            self._pos += 1
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        expected = self._frame_count
        if self._pos == 0 or (expected is not None and self._pos < expected - FRAME_COUNT_SLACK):
            raise self._ended_early(self._pos)

    def read_frames(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """The frames at `indices` (any order, repeats allowed) -> (T, H, W, 3) uint8 RGB.

        Visits the wanted frames in ascending order, skipping the others without converting
        them (a long gap is crossed by seeking), so only the requested frames are held."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            return np.empty((0, self.height, self.width, 3), dtype=np.uint8)
        total = self.frame_count
        if idx.min() < 0 or idx.max() >= total:
            raise MediaError(
                f"{self.path}: frame indices {int(idx.min())}..{int(idx.max())} outside the video's 0..{total - 1}"
            )
        self._restart()
        got: dict[int, np.ndarray] = {}
        for target in np.unique(idx).tolist():  # ascending
            with _quiet_opencv():
                self._skip_to(target)
                ok, frame = self._cap.read()
            if not ok or frame is None:
                raise self._ended_early(self._pos)
            self._pos += 1
            got[target] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        return np.stack([got[i] for i in idx.tolist()])

    def _skip_to(self, target: int) -> None:
        """Make `target` the next frame decoded. Seeks across gaps longer than `SEEK_GAP`
        (FFmpeg seeks to the keyframe before it and decodes forward, frame-accurate); if
        the seek does not land on `target`, starts over and decodes forward instead."""
        if target - self._pos > SEEK_GAP:
            if self._cap.set(cv2.CAP_PROP_POS_FRAMES, target) and int(self._cap.get(cv2.CAP_PROP_POS_FRAMES)) == target:
                self._pos = target
                return
            self._cap.release()
            self._cap = self._open()
            self._pos = 0
        while self._pos < target:
            if not self._cap.grab():
                raise self._ended_early(self._pos)
            self._pos += 1

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_frames(path: str | os.PathLike, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """The frames at `indices` of a video file -> (T, H, W, 3) uint8 RGB."""
    with VideoReader(path) as reader:
        return reader.read_frames(indices)


# --------------------------------------------------------------------------- writing


def _temp_beside(path: Path) -> Path:
    """A new empty file in `path`'s folder, hidden, ending in `path`'s suffix (OpenCV
    picks the container from it)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + (path.suffix or ""), dir=path.parent)
    except OSError as e:
        raise MediaError(f"{path}: cannot write here ({e.strerror or e})") from None
    os.close(fd)
    return Path(tmp)


def _unlink_quietly(path: Path | None) -> None:
    if path is not None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def write_png_atomic(path: str | os.PathLike, img: np.ndarray) -> Path:
    """Write a PNG via a temporary file and a rename: the target is either the old file or
    the complete new one. `img`: (H, W) bool/uint8 (a mask; bool as 0/255), (H, W, 3) RGB
    or (H, W, 4) RGBA uint8. Returns the path."""
    target = Path(path)
    a = np.asarray(img)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))) or 0 in a.shape:
        raise MediaError(
            f"{target}: a PNG takes an (H, W), (H, W, 3) or (H, W, 4) uint8 image, got {a.dtype} {a.shape}"
        )
    if a.ndim == 3:
        a = cv2.cvtColor(a, cv2.COLOR_RGB2BGR if a.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    ok, buf = cv2.imencode(".png", a)
    if not ok:
        raise MediaError(f"{target}: could not encode the PNG")
    tmp = _temp_beside(target)
    try:
        tmp.write_bytes(buf.tobytes())
        os.replace(tmp, target)
    except OSError as e:
        _unlink_quietly(tmp)
        raise MediaError(f"{target}: cannot write the PNG ({e.strerror or e})") from None
    return target


# Lossless video (FFmpeg's FFV1, in a Matroska .mkv): exact RGB frames, e.g. masks.
LOSSLESS_FOURCC = "FFV1"


class VideoWriter:
    """Writes RGB frames to a video file (MP4, MPEG-4 Part 2 "mp4v": the encoder every
    OpenCV build has), atomically: frames go to a hidden temporary file beside the target,
    which `close()` checks (frame count) and renames over the target. `abort()`, or an
    exception inside a `with` block, deletes the temporary file instead.

    The frame size is fixed by `frame_size` (width, height) or by the first frame. MPEG-4
    Part 2 needs even sides (OpenCV's encoder would silently crop an odd one), so an odd
    width or height is padded by one replicated pixel column or row (FFV1 too: OpenCV's
    writer would crop it as well).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: float,
        frame_size: tuple[int, int] | None = None,
        fourcc: str = "mp4v",
    ):
        if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise MediaError(f"{path}: fps must be a positive number, got {fps!r}")
        self.path = Path(path)
        self.fps = float(fps)
        self.fourcc = fourcc
        self.frame_size = frame_size  # (width, height) of the frames given
        self.frames_written = 0
        self._tmp: Path | None = None
        self._writer: cv2.VideoWriter | None = None
        self._closed = False

    def _open(self, width: int, height: int) -> None:
        self._tmp = _temp_beside(self.path)
        size = (width + width % 2, height + height % 2)
        with _quiet_opencv():
            writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, size)
        if not writer.isOpened():
            _unlink_quietly(self._tmp)
            self._tmp = None
            raise MediaError(f"{self.path}: cannot open a {self.fourcc!r} video writer for this file type")
        self._writer = writer

    def write(self, frame: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 RGB frame."""
        if self._closed:
            raise MediaError(f"{self.path}: the video writer is closed")
        f = _check_rgb(frame)
        h, w = f.shape[:2]
        if self.frame_size is None:
            self.frame_size = (w, h)
        if (w, h) != tuple(self.frame_size):
            raise MediaError(f"{self.path}: frame {self.frames_written} is {w} x {h}, the video {self.frame_size[0]} x "
                             f"{self.frame_size[1]}")
        if self._writer is None:
            self._open(w, h)
        if w % 2 or h % 2:
            f = np.pad(f, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        self._writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
        self.frames_written += 1

    def close(self) -> Path:
        """Finish the file, check it and move it into place; returns the path."""
        if self._closed:
            return self.path
        self._closed = True
        if self._writer is None:
            raise MediaError(f"{self.path}: no frames were written; no video file made")
        self._writer.release()
        self._writer = None
        tmp, self._tmp = self._tmp, None
        try:
            with _quiet_opencv():
                cap = cv2.VideoCapture(str(tmp), cv2.CAP_FFMPEG)
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else -1
            cap.release()
            if count != self.frames_written:
                raise MediaError(f"{self.path}: the encoder wrote {count} of {self.frames_written} frames")
            os.replace(tmp, self.path)
        except OSError as e:
            _unlink_quietly(tmp)
            raise MediaError(f"{self.path}: cannot write the video ({e.strerror or e})") from None
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return self.path

    def abort(self) -> None:
        """Drop the partial file; the target is left as it was."""
        self._closed = True
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        _unlink_quietly(self._tmp)
        self._tmp = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
