"""vitron-rt: an ONNX / TensorRT edge-serving runtime for Vitron-style pixel-level vision LLMs.

Importing the package imports nothing heavy: torch lives behind `vitron_rt.models` and
`vitron_rt.export`, TensorRT and CUDA behind the engines that need them.
"""

__version__ = "0.1.0"
