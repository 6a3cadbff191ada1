// Logits to token on the device: one block per sequence, one int32 out per step.
//
//   logits (rows, V) fp32/fp16 ──► z = logits, repetition penalty on the seen ids
//     ├─ greedy ──────────────────► argmax z (first index on ties)        ──► out[row]
//     └─ sample: z /= T ──► top-k threshold (radix select, ties kept)
//                       ──► q = exp(z - max) as 40-bit fixed point (0 outside top-k)
//                       ──► top-p: first kept position in ascending (z, index) order
//                       ──► draw with the host's u: index order (no top-p) or
//                           ascending order (top-p), first cumulative mass > u * total
//                                                                          ──► out[row]
//
// The semantics are those of vitron_rt/kernels/sampling.py (`sample_reference`), which
// are the runtime sampler's. Ordered selections are radix descents over a 32-bit key
// that sorts floats (4 passes of 8 bits, a histogram of counts or masses in shared
// memory), then a search among equal keys in index order. Masses are integers, so sums
// do not depend on the order the threads add in: the result is deterministic.
//
// Launch: grid (rows), block up to 1024 threads (any size; 1024 is what the host uses).
// Workspace: z (rows, V) float and q (rows, V) u64. A row whose largest logit is NaN or
// +-inf when sampling gets -1 (the host raises, as the reference does).
#include "common.cuh"

#define VK_MAX_THREADS 1024
#define VK_MASS_ONE 1099511627776.0  // 2^40: the fixed-point weight of probability max/max

struct VkSampleShared {
    u64 scan[VK_MAX_THREADS];
    u64 hist[256];
    u32 key[VK_MAX_THREADS];
    int idx[VK_MAX_THREADS];
    u64 below, weight;
    u32 bin;
    int index;
};

#ifndef VK_HOST_EMULATION
__device__ __forceinline__ u32 vk_float_bits(float z) { return __float_as_uint(z); }
#endif

// Ascending unsigned order of floats: -inf lowest, NaN above +inf, -0 folded onto +0
// (numpy compares them equal, so they must tie).
__device__ __forceinline__ u32 vk_key(float z) {
    if (z != z) return 0xFFFFFFFFu;
    if (z == 0.0f) return 0x80000000u;
    const u32 b = vk_float_bits(z);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

#define VK_KEY_NEG_INF 0x007FFFFFu

// Exclusive prefix sum of one u64 per thread over the block; *total gets the sum.
__device__ u64 vk_block_scan(u64 v, u64* total, VkSampleShared& sh) {
    const int t = threadIdx.x, n = blockDim.x;
    sh.scan[t] = v;
    __syncthreads();
    for (int off = 1; off < n; off <<= 1) {
        const u64 add = t >= off ? sh.scan[t - off] : 0;
        __syncthreads();
        sh.scan[t] += add;
        __syncthreads();
    }
    const u64 inclusive = sh.scan[t];
    *total = sh.scan[n - 1];
    __syncthreads();
    return inclusive - v;
}

// The block's largest key, and the smallest index holding it.
__device__ void vk_block_argmax(u32 key, int idx, u32* best_key, int* best_idx, VkSampleShared& sh) {
    const int t = threadIdx.x, n = blockDim.x;
    sh.key[t] = key;
    sh.idx[t] = idx;
    __syncthreads();
    int span = 1;
    while (span < n) span <<= 1;
    for (int s = span >> 1; s > 0; s >>= 1) {
        if (t < s && t + s < n) {
            const u32 k2 = sh.key[t + s];
            const int i2 = sh.idx[t + s];
            if (k2 > sh.key[t] || (k2 == sh.key[t] && i2 < sh.idx[t])) {
                sh.key[t] = k2;
                sh.idx[t] = i2;
            }
        }
        __syncthreads();
    }
    *best_key = sh.key[0];
    *best_idx = sh.idx[0];
    __syncthreads();
}

// The element at which the inclusive prefix weight, in ascending (key, index) order over
// the elements of positive weight, first exceeds `target` (< the total weight). Weights
// are 1 for every element when `q` is null (an order statistic), else q[i]. Returns the
// key; when `want_index`, also the element's index (else -1).
__device__ u32 vk_select(const float* z, const u64* q, int vocab, u64 target, int want_index, int* index,
                         VkSampleShared& sh) {
    const int t = threadIdx.x, n = blockDim.x;
    u32 prefix = 0;
    u64 below = 0;  // weight of the elements whose key is below the current range
    const int bins_per_thread = (256 + n - 1) / n;
    for (int pass = 0; pass < 4; ++pass) {
        const int shift = 24 - 8 * pass;
        for (int b = t; b < 256; b += n) sh.hist[b] = 0;
        __syncthreads();
        for (int i = t; i < vocab; i += n) {
            const u64 w = q ? q[i] : 1;
            if (!w) continue;
            const u32 k = vk_key(z[i]);
            if (pass > 0 && (k >> (shift + 8)) != (prefix >> (shift + 8))) continue;
            atomicAdd(&sh.hist[(k >> shift) & 255u], w);
        }
        __syncthreads();
        const int b0 = t * bins_per_thread;
        u64 mine = 0;
        for (int b = b0; b < b0 + bins_per_thread && b < 256; ++b) mine += sh.hist[b];
        u64 total;
        u64 acc = below + vk_block_scan(mine, &total, sh);
        for (int b = b0; b < b0 + bins_per_thread && b < 256; ++b) {
            const u64 h = sh.hist[b];
            if (h && acc <= target && target < acc + h) {
                sh.bin = (u32)b;
                sh.below = acc;
            }
            acc += h;
        }
        __syncthreads();
        prefix |= sh.bin << shift;
        below = sh.below;
        __syncthreads();
    }
    *index = -1;
    if (!want_index) return prefix;
    // Among the elements with this key (all of one weight), the j-th in index order.
    const int chunk = (vocab + n - 1) / n;
    const int lo = vk_min(t * chunk, vocab), hi = vk_min(lo + chunk, vocab);
    if (t == 0) sh.index = -1;  // published by the scan's barriers
    u64 count = 0;
    for (int i = lo; i < hi; ++i) {
        const u64 w = q ? q[i] : 1;
        if (w && vk_key(z[i]) == prefix) {
            ++count;
            sh.weight = w;  // the same value from every writer
        }
    }
    u64 total;
    const u64 before = vk_block_scan(count, &total, sh);  // its syncs publish sh.weight
    const u64 j = (target - below) / sh.weight;
    if (before <= j && j < before + count) {
        u64 seen = before;
        for (int i = lo; i < hi; ++i) {
            const u64 w = q ? q[i] : 1;
            if (w && vk_key(z[i]) == prefix) {
                if (seen == j) {
                    sh.index = i;
                    break;
                }
                ++seen;
            }
        }
    }
    __syncthreads();
    *index = sh.index;
    __syncthreads();
    return prefix;
}

// The first index, in index order, at which the inclusive prefix of q exceeds `target`.
__device__ int vk_select_in_index_order(const u64* q, int vocab, u64 target, VkSampleShared& sh) {
    const int t = threadIdx.x, n = blockDim.x;
    const int chunk = (vocab + n - 1) / n;
    const int lo = vk_min(t * chunk, vocab), hi = vk_min(lo + chunk, vocab);
    if (t == 0) sh.index = -1;  // published by the scan's barriers
    u64 mine = 0;
    for (int i = lo; i < hi; ++i) mine += q[i];
    u64 total;
    u64 acc = vk_block_scan(mine, &total, sh);
    if (acc <= target && target < acc + mine) {
        for (int i = lo; i < hi; ++i) {
            acc += q[i];
            if (acc > target) {
                sh.index = i;
                break;
            }
        }
    }
    __syncthreads();
    const int index = sh.index;
    __syncthreads();
    return index;
}

__device__ __forceinline__ float vk_logit(const void* logits, int fp16, i64 at) {
    return fp16 ? vk_f16_to_f32(((const u16*)logits)[at]) : ((const float*)logits)[at];
}

// seen: (rows, seen_stride) token ids, -1 (or any id outside the vocabulary) ignored.
// u: (rows,) uniform numbers in [0, 1) from the host. out: (rows,) token ids.
VK_KERNEL void __launch_bounds__(VK_MAX_THREADS) vk_sample(
    const void* logits, int logits_fp16, i64 row_stride, int vocab,
    const int* seen, int seen_stride, float penalty,
    int greedy, float temperature, int top_k, double top_p,
    const double* u, float* work_z, u64* work_q, int* out) {
    __shared__ VkSampleShared sh;
    const int row = blockIdx.x, t = threadIdx.x, n = blockDim.x;
    float* z = work_z + (i64)row * vocab;
    u64* q = work_q + (i64)row * vocab;
    const i64 base = (i64)row * row_stride;

    for (int i = t; i < vocab; i += n) z[i] = vk_logit(logits, logits_fp16, base + i);
    __syncthreads();
    if (seen && seen_stride > 0 && penalty != 1.0f) {  // from the original logits: repeats are harmless
        for (int j = t; j < seen_stride; j += n) {
            const int id = seen[(i64)row * seen_stride + j];
            if (id < 0 || id >= vocab) continue;
            const float v = vk_logit(logits, logits_fp16, base + id);
            z[id] = v < 0.0f ? v * penalty : v / penalty;
        }
    }
    __syncthreads();

    const int sample = !greedy && temperature > 0.0f;
    const int scale = sample && temperature != 1.0f;
    u32 best_key = 0;
    int best_idx = 0x7FFFFFFF;
    for (int i = t; i < vocab; i += n) {
        float v = z[i];
        if (scale) {
            v = v / temperature;
            z[i] = v;
        }
        const u32 k = vk_key(v);
        if (k > best_key) {
            best_key = k;
            best_idx = i;
        }
    }
    u32 top_key;
    int top_idx;
    vk_block_argmax(best_key, best_idx, &top_key, &top_idx, sh);
    if (!sample) {
        if (t == 0) out[row] = top_idx;
        return;
    }
    const float top = z[top_idx];
    if (top != top || top_key >= 0xFF800000u) {  // NaN or +inf: nothing finite to sample from
        if (t == 0) out[row] = -1;
        return;
    }
    if (top_key <= VK_KEY_NEG_INF) {  // every logit is -inf
        if (t == 0) out[row] = -1;
        return;
    }

    const int use_k = top_k > 0 && top_k < vocab;
    int unused;
    const u32 k_key = use_k ? vk_select(z, 0, vocab, (u64)(vocab - top_k), 0, &unused, sh) : 0u;
    u64 mine = 0;
    for (int i = t; i < vocab; i += n) {
        const u32 k = vk_key(z[i]);
        const int candidate = use_k ? k >= k_key : k > VK_KEY_NEG_INF;
        u64 w = 0;
        if (candidate) w = (u64)(exp((double)z[i] - (double)top) * VK_MASS_ONE + 0.5);
        q[i] = w;
        mine += w;
    }
    u64 total;
    vk_block_scan(mine, &total, sh);  // the max element alone weighs 2^40: total > 0

    if (top_p < 1.0) {
        // Drop the ascending prefix whose cumulative probability is <= 1 - top_p.
        double cut = floor((1.0 - top_p) * (double)total);
        u64 target = cut >= (double)(total - 1) ? total - 1 : (u64)cut;
        int p_idx;
        const u32 p_key = vk_select(z, q, vocab, target, 1, &p_idx, sh);
        mine = 0;
        for (int i = t; i < vocab; i += n) {
            const u32 k = vk_key(z[i]);
            if (q[i] && (k < p_key || (k == p_key && i < p_idx))) q[i] = 0;
            mine += q[i];
        }
        vk_block_scan(mine, &total, sh);
        cut = floor(u[row] * (double)total);
        target = cut >= (double)(total - 1) ? total - 1 : (u64)cut;
        int token;
        vk_select(z, q, vocab, target, 1, &token, sh);
        if (t == 0) out[row] = token;
    } else {
        const double cut = floor(u[row] * (double)total);
        const u64 target = cut >= (double)(total - 1) ? total - 1 : (u64)cut;
        const int token = vk_select_in_index_order(q, vocab, target, sh);
        if (t == 0) out[row] = token;
    }
}
