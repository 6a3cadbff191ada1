// Fused preprocess: uint8 frame -> resize -> crop/pad -> normalise -> CHW fp32/fp16.
//
//   frame (RGB | BGR | NV12) ──► per source tap: NV12 -> RGB (OpenCV's BT.601 integers)
//        ──► separable resize from the host's tables (OpenCV INTER_LINEAR or Pillow)
//        ──► canvas placement (a negative offset crops, a positive one pads)
//        ──► lut[c][byte] = (byte / 255 - mean[c]) / std[c] ──► out[c][y][x]
//
// One thread per output pixel, all three channels; every output element is written
// (pad value outside the image), so a caller's buffer needs no clearing. The host half
// (vitron_rt/kernels/preprocess.py) computes the tables and the lookup table; the numpy
// model of this kernel is `preprocess_reference`, which it must equal exactly.
#include "common.cuh"

#define VK_FORMAT_RGB 0
#define VK_FORMAT_BGR 1
#define VK_FORMAT_NV12 2

#define VK_CONVENTION_OPENCV 0  // 11-bit weights, int between passes, SIMD rounding
#define VK_CONVENTION_PILLOW 1  // 22-bit weights, uint8 between passes

#define VK_PIL_BITS 22

struct VkFrame {
    const u8* pixels;  // RGB/BGR: (height, pitch) rows of 3 * width bytes; NV12: the Y plane
    const u8* uv;      // NV12 only: (height / 2, uv_pitch) interleaved U, V
    int height, width, pitch, uv_pitch, format;
};

// OpenCV's COLOR_YUV2RGB_NV12 for the pixel at (r, c) (color.py has the formula).
__device__ __forceinline__ void vk_nv12_rgb(const VkFrame& f, int r, int c, int rgb[3]) {
    const int y = f.pixels[(i64)r * f.pitch + c];
    const u8* uv = f.uv + (i64)(r >> 1) * f.uv_pitch + (c & ~1);
    const int u = (int)uv[0] - 128, v = (int)uv[1] - 128;
    const int yy = vk_max(y - 16, 0) * 1220542 + (1 << 19);
    rgb[0] = vk_clamp((yy + 1673527 * v) >> 20, 0, 255);
    rgb[1] = vk_clamp((yy - 852492 * v - 409993 * u) >> 20, 0, 255);
    rgb[2] = vk_clamp((yy + 2116026 * u) >> 20, 0, 255);
}

__device__ __forceinline__ void vk_load_rgb(const VkFrame& f, int r, int c, int rgb[3]) {
    if (f.format == VK_FORMAT_NV12) {
        vk_nv12_rgb(f, r, c, rgb);
        return;
    }
    const u8* p = f.pixels + (i64)r * f.pitch + 3 * c;
    const int swap = f.format == VK_FORMAT_BGR;
    rgb[0] = p[swap ? 2 : 0];
    rgb[1] = p[1];
    rgb[2] = p[swap ? 0 : 2];
}

// The resized pixel (ry, rx), three channels, from the separable tables: the horizontal
// sums of each source row a vertical tap needs, combined as the convention says.
__device__ __forceinline__ void vk_resized_pixel(const VkFrame& f, const int* x_first, const int* x_weights,
                                                 int x_taps, const int* y_first, const int* y_weights, int y_taps,
                                                 int convention, int ry, int rx, int out[3]) {
    int acc[3] = {0, 0, 0};
    const int fy = y_first[ry], fx = x_first[rx];
    for (int j = 0; j < y_taps; ++j) {
        const int wy = y_weights[ry * y_taps + j];
        if (wy == 0) continue;  // adds nothing in either convention
        const int r = vk_clamp(fy + j, 0, f.height - 1);
        int h[3] = {0, 0, 0};
        for (int i = 0; i < x_taps; ++i) {
            const int wx = x_weights[rx * x_taps + i];
            if (wx == 0) continue;
            int px[3];
            vk_load_rgb(f, r, vk_clamp(fx + i, 0, f.width - 1), px);
            for (int c = 0; c < 3; ++c) h[c] += px[c] * wx;
        }
        for (int c = 0; c < 3; ++c) {
            if (convention == VK_CONVENTION_OPENCV) {
                acc[c] += ((h[c] >> 4) * wy) >> 16;  // OpenCV's v_mul_hi on (h >> 4)
            } else {
                acc[c] += vk_clamp((h[c] + (1 << (VK_PIL_BITS - 1))) >> VK_PIL_BITS, 0, 255) * wy;
            }
        }
    }
    for (int c = 0; c < 3; ++c) {
        out[c] = convention == VK_CONVENTION_OPENCV ? vk_clamp((acc[c] + 2) >> 2, 0, 255)
                                                    : vk_clamp((acc[c] + (1 << (VK_PIL_BITS - 1))) >> VK_PIL_BITS, 0, 255);
    }
}

// out: (3, out_size, out_size) at `out`, fp16 when out_fp16 else fp32.
// lut: (3 * 256 + 3) floats: the normalised value per channel and byte, then the pad values.
VK_KERNEL void __launch_bounds__(256) vk_preprocess(
    const u8* pixels, const u8* uv, int height, int width, int pitch, int uv_pitch, int format,
    const int* x_first, const int* x_weights, int x_taps,
    const int* y_first, const int* y_weights, int y_taps, int convention,
    int resized_h, int resized_w, int offset_y, int offset_x,
    const float* lut, void* out, int out_size, int out_fp16) {
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= out_size || y >= out_size) return;
    const VkFrame f = {pixels, uv, height, width, pitch, uv_pitch, format};
    const int ry = y - offset_y, rx = x - offset_x;
    float v[3];
    if (ry < 0 || ry >= resized_h || rx < 0 || rx >= resized_w) {
        for (int c = 0; c < 3; ++c) v[c] = lut[768 + c];
    } else {
        int px[3];
        vk_resized_pixel(f, x_first, x_weights, x_taps, y_first, y_weights, y_taps, convention, ry, rx, px);
        for (int c = 0; c < 3; ++c) v[c] = lut[c * 256 + px[c]];
    }
    const i64 plane = (i64)out_size * out_size, o = (i64)y * out_size + x;
    for (int c = 0; c < 3; ++c) {
        if (out_fp16) {
            ((u16*)out)[c * plane + o] = vk_f32_to_f16(v[c]);
        } else {
            ((float*)out)[c * plane + o] = v[c];
        }
    }
}
