"""The serving runtime: tokenizer, generation with a KV cache, hybrid messages, task
pipelines. Imports no torch: serving a bundle needs numpy, onnxruntime, tokenizers, opencv.
"""
