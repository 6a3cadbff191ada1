"""Runners over ONNX Runtime and TensorRT: one lifecycle (activate / infer / deactivate).

Knows ONNX files and engine plans, never torch modules or tasks.
"""
