// Gather of rows (the signal tokens' hidden states) into a dense buffer (the signal
// projector's input), converting fp16 <-> fp32 on the way.
//
//   src (N, width) rows, row stride src_stride ──► dst[k] = src[rows[k]], row stride dst_stride
//
// grid (ceil(width / blockDim.x), n_rows): one thread per element. The host checks the
// rows are inside the source (vitron_rt/kernels/gather.py); fp16 -> fp16 is a bit copy.
#include "common.cuh"

VK_KERNEL void __launch_bounds__(256) vk_gather_rows(
    const void* src, int src_fp16, i64 src_stride, const int* rows, int n_rows, int width,
    void* dst, int dst_fp16, i64 dst_stride) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int k = blockIdx.y;
    if (i >= width || k >= n_rows) return;
    const i64 s = (i64)rows[k] * src_stride + i, d = (i64)k * dst_stride + i;
    if (src_fp16 && dst_fp16) {
        ((u16*)dst)[d] = ((const u16*)src)[s];
        return;
    }
    const float v = src_fp16 ? vk_f16_to_f32(((const u16*)src)[s]) : ((const float*)src)[s];
    if (dst_fp16) {
        ((u16*)dst)[d] = vk_f32_to_f16(v);
    } else {
        ((float*)dst)[d] = v;
    }
}
