// Shared by every vitron-rt kernel: fixed-width types, the fp16 conversions, and float
// arithmetic that is never contracted into a fused multiply-add (the numpy references
// round every product and every sum, and the kernels must equal them bit for bit).
//
// The sources compile three ways: nvcc through the top-level CMakeLists.txt (fatbinary),
// NVRTC at first use (vitron_rt/kernels/loader.py), and the host emulation the CPU tests
// build (tests/kernels/kernel_emulator.cpp), which defines VK_HOST_EMULATION and its own
// versions of the few intrinsics below. No system or toolkit header is included, so
// NVRTC needs no include path besides this folder.
#pragma once

typedef unsigned char u8;
typedef unsigned short u16;
typedef int i32;
typedef unsigned int u32;
typedef long long i64;
typedef unsigned long long u64;

#ifndef VK_HOST_EMULATION
#define VK_KERNEL extern "C" __global__

// fp32 -> fp16, round to nearest even (numpy's astype(float16)).
__device__ __forceinline__ u16 vk_f32_to_f16(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// fp16 -> fp32, exact.
__device__ __forceinline__ float vk_f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ float vk_mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float vk_add(float a, float b) { return __fadd_rn(a, b); }
#endif

__device__ __forceinline__ int vk_clamp(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }
__device__ __forceinline__ int vk_min(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int vk_max(int a, int b) { return a > b ? a : b; }
