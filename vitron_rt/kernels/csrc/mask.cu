// Mask postprocess: low-res logits -> frame-sized mask + coloured overlay, in place.
//
//   logits (m_h, m_w) ──► bilinear to the padded S x S (up_x, up_y tables)
//                     ──► crop the valid nh x nw corner, bilinear to H x W (down_x, down_y)
//                     ──► > threshold ──► mask[y][x] = 0 / 1, and where 1:
//                                         frame[y][x][c] = blend[c][frame[y][x][c]]
//
// One thread per frame pixel. The S x S map is never stored: each output needs 2 x 2
// values of it, each 2 x 2 logits. Every product and sum is rounded separately
// (vk_mul / vk_add), in the order of cv2.resize (horizontal, then vertical), which is
// what the numpy model (`upsample_reference`) does. Each axis table holds, per output
// coordinate, two clamped source indices (int2) and their two weights (float2).
#include "common.cuh"

__device__ __forceinline__ float vk_lerp(float a, float b, const float* w) {
    return vk_add(vk_mul(a, w[0]), vk_mul(b, w[1]));
}

// The S x S upsampled logit at (r, c): horizontal over the two logit columns of c, on
// the two logit rows of r, then vertical.
__device__ __forceinline__ float vk_upsampled(const float* logits, int logits_w, const int* up_x_idx,
                                              const float* up_x_w, const int* up_y_idx, const float* up_y_w,
                                              int r, int c) {
    const int c0 = up_x_idx[2 * c], c1 = up_x_idx[2 * c + 1];
    const int r0 = up_y_idx[2 * r], r1 = up_y_idx[2 * r + 1];
    const float* row0 = logits + (i64)r0 * logits_w;
    const float* row1 = logits + (i64)r1 * logits_w;
    const float h0 = vk_lerp(row0[c0], row0[c1], up_x_w + 2 * c);
    const float h1 = vk_lerp(row1[c0], row1[c1], up_x_w + 2 * c);
    return vk_lerp(h0, h1, up_y_w + 2 * r);
}

// mask: (height, mask_pitch) bytes or null; frame: (height, frame_pitch) RGB bytes or null;
// blend_lut: (3, 256); count: one u64 the number of mask pixels is added to, or null.
VK_KERNEL void __launch_bounds__(256) vk_mask_postprocess(
    const float* logits, int logits_w,
    const int* up_x_idx, const float* up_x_w, const int* up_y_idx, const float* up_y_w,
    const int* down_x_idx, const float* down_x_w, const int* down_y_idx, const float* down_y_w,
    int height, int width, float threshold,
    u8* mask, int mask_pitch, u8* frame, int frame_pitch, const u8* blend_lut, u64* count) {
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    int on = 0;
    if (x < width && y < height) {  // no early return: the whole block reaches the count
        const int cx0 = down_x_idx[2 * x], cx1 = down_x_idx[2 * x + 1];
        const int ry0 = down_y_idx[2 * y], ry1 = down_y_idx[2 * y + 1];
        const float* wx = down_x_w + 2 * x;
        const float h0 = vk_lerp(vk_upsampled(logits, logits_w, up_x_idx, up_x_w, up_y_idx, up_y_w, ry0, cx0),
                                 vk_upsampled(logits, logits_w, up_x_idx, up_x_w, up_y_idx, up_y_w, ry0, cx1), wx);
        const float h1 = vk_lerp(vk_upsampled(logits, logits_w, up_x_idx, up_x_w, up_y_idx, up_y_w, ry1, cx0),
                                 vk_upsampled(logits, logits_w, up_x_idx, up_x_w, up_y_idx, up_y_w, ry1, cx1), wx);
        const float v = vk_lerp(h0, h1, down_y_w + 2 * y);
        on = v > threshold;
        if (mask) mask[(i64)y * mask_pitch + x] = (u8)on;
        if (on && frame) {
            u8* p = frame + (i64)y * frame_pitch + 3 * x;
            for (int c = 0; c < 3; ++c) p[c] = blend_lut[c * 256 + p[c]];
        }
    }
    if (count) {  // uniform across the block
        const int n = __syncthreads_count(on);
        if (threadIdx.x == 0 && threadIdx.y == 0 && n) atomicAdd(count, (u64)n);
    }
}

// The overlay alone, for a mask that already exists: frame pixels under a non-zero mask
// byte become blend[c][byte]; the others are not touched.
VK_KERNEL void __launch_bounds__(256) vk_overlay(
    u8* frame, int height, int width, int frame_pitch, const u8* mask, int mask_pitch, const u8* blend_lut) {
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= width || y >= height || !mask[(i64)y * mask_pitch + x]) return;
    u8* p = frame + (i64)y * frame_pitch + 3 * x;
    for (int c = 0; c < 3; ++c) p[c] = blend_lut[c * 256 + p[c]];
}
