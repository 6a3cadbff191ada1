"""Keeping library chatter off a command's stderr.

vitron-rt prints its own progress, and a failure is one line of its own; progress bars,
load reports and exporter warnings from transformers, diffusers and torch.onnx would bury
both. Commands call `quiet_libraries()` once, and again after importing torch (its import
resets its loggers' levels).
"""

from __future__ import annotations

import logging
import sys
import warnings

_LOGGERS = (
    "transformers",
    "diffusers",
    "accelerate",
    "onnxscript",
    "torch.onnx",
    "torch.onnx._internal.exporter._registration",
    "torch.export",
)


def quiet_libraries() -> None:
    """Silence warnings and library loggers below ERROR; idempotent."""
    warnings.filterwarnings("ignore")
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
