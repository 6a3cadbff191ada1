"""CUDA pre/post-processing kernels with numpy references (the CPU path)."""
