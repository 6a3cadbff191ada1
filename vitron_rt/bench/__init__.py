"""Benchmarks of a bundle against PyTorch eager and onnxruntime-genai."""
