"""The C parameter lists of the kernels in csrc/, as the launcher packs them.

cuLaunchKernel takes an array of pointers, one per parameter, and reads as many bytes
through each as the kernel's parameter type has; a Python int packed as the wrong width
would shift nothing visibly and read garbage. So each kernel's parameters are declared
here once, by name and C type, and a test parses the `extern "C" __global__` declarations
in the .cu files and checks they say the same.
"""

from __future__ import annotations

import ctypes

# C type (as written in csrc/) -> the ctypes type that holds one argument of it.
C_TYPES: dict[str, type] = {
    "int": ctypes.c_int32,
    "float": ctypes.c_float,
    "double": ctypes.c_double,
    "i64": ctypes.c_int64,
    "pointer": ctypes.c_void_p,  # any `T*`
}

Param = tuple[str, str]  # (name, C type as in C_TYPES)

SIGNATURES: dict[str, tuple[Param, ...]] = {
    "vk_preprocess": (
        ("pixels", "pointer"), ("uv", "pointer"), ("height", "int"), ("width", "int"), ("pitch", "int"),
        ("uv_pitch", "int"), ("format", "int"),
        ("x_first", "pointer"), ("x_weights", "pointer"), ("x_taps", "int"),
        ("y_first", "pointer"), ("y_weights", "pointer"), ("y_taps", "int"), ("convention", "int"),
        ("resized_h", "int"), ("resized_w", "int"), ("offset_y", "int"), ("offset_x", "int"),
        ("lut", "pointer"), ("out", "pointer"), ("out_size", "int"), ("out_fp16", "int"),
    ),
    "vk_mask_postprocess": (
        ("logits", "pointer"), ("logits_w", "int"),
        ("up_x_idx", "pointer"), ("up_x_w", "pointer"), ("up_y_idx", "pointer"), ("up_y_w", "pointer"),
        ("down_x_idx", "pointer"), ("down_x_w", "pointer"), ("down_y_idx", "pointer"), ("down_y_w", "pointer"),
        ("height", "int"), ("width", "int"), ("threshold", "float"),
        ("mask", "pointer"), ("mask_pitch", "int"), ("frame", "pointer"), ("frame_pitch", "int"),
        ("blend_lut", "pointer"), ("count", "pointer"),
    ),
    "vk_overlay": (
        ("frame", "pointer"), ("height", "int"), ("width", "int"), ("frame_pitch", "int"),
        ("mask", "pointer"), ("mask_pitch", "int"), ("blend_lut", "pointer"),
    ),
    "vk_gather_rows": (
        ("src", "pointer"), ("src_fp16", "int"), ("src_stride", "i64"), ("rows", "pointer"), ("n_rows", "int"),
        ("width", "int"), ("dst", "pointer"), ("dst_fp16", "int"), ("dst_stride", "i64"),
    ),
    "vk_sample": (
        ("logits", "pointer"), ("logits_fp16", "int"), ("row_stride", "i64"), ("vocab", "int"),
        ("seen", "pointer"), ("seen_stride", "int"), ("penalty", "float"),
        ("greedy", "int"), ("temperature", "float"), ("top_k", "int"), ("top_p", "double"),
        ("u", "pointer"), ("work_z", "pointer"), ("work_q", "pointer"), ("out", "pointer"),
    ),
}

# Which source module (csrc/<module>.cu) defines each kernel.
MODULE_OF: dict[str, str] = {
    "vk_preprocess": "preprocess",
    "vk_mask_postprocess": "mask",
    "vk_overlay": "mask",
    "vk_gather_rows": "gather",
    "vk_sample": "sampling",
}

MODULES: tuple[str, ...] = ("gather", "mask", "preprocess", "sampling")


class KernelArgs:
    """One launch's arguments packed as cuLaunchKernel wants them: each value in its own
    ctypes object of the declared C type, and an array of their addresses. Holding this
    object keeps every value alive until the launch call has returned."""

    def __init__(self, kernel: str, values: dict[str, object]):
        params = SIGNATURES[kernel]
        names = [n for n, _ in params]
        missing = [n for n in names if n not in values]
        extra = [n for n in values if n not in names]
        if missing or extra:
            raise TypeError(f"{kernel}: missing arguments {missing}, unknown {extra}")
        self.values = [C_TYPES[ctype](int(values[name]) if ctype in ("int", "i64", "pointer") else values[name])
                       for name, ctype in params]
        self.array = (ctypes.c_void_p * len(self.values))(*[ctypes.addressof(v) for v in self.values])

    @property
    def address(self) -> int:
        """The `void**` to pass as kernelParams."""
        return ctypes.addressof(self.array)
