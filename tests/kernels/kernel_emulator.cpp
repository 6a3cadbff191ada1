// Runs the CUDA kernels of vitron_rt/kernels/csrc on the CPU, so their arithmetic and
// indexing are tested on machines without a GPU (the device itself is tested by the
// @pytest.mark.gpu tests). The .cu files are compiled as C++ with the handful of CUDA
// names they use defined here:
//
//   launch(grid, block): one std::thread per thread of a block, the blocks one after
//   another; __shared__ is `static` (one block at a time owns it); __syncthreads is a
//   std::barrier; atomics are GCC builtins; fp16 conversions go through _Float16
//   (round to nearest even, like cvt.rn.f16.f32); float products and sums are plain
//   IEEE single operations (built with -ffp-contract=off, so never fused).
//
// `emu_launch(name, grid, block, params)` takes the kernel parameters as CUDA's
// cuLaunchKernel does (an array of pointers to each value), so the Python backend's
// packing of arguments is exercised unchanged; the parameter types come from the
// kernels' own declarations.
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#define VK_HOST_EMULATION 1

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
static thread_local dim3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;
static std::barrier<>* g_barrier = nullptr;
static int g_count_accumulator = 0;

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(n)
#define VK_KERNEL extern "C"

using std::exp;
using std::floor;

static inline void __syncthreads() { g_barrier->arrive_and_wait(); }

static inline int __syncthreads_count(int predicate) {
    if (predicate) __atomic_fetch_add(&g_count_accumulator, 1, __ATOMIC_SEQ_CST);
    g_barrier->arrive_and_wait();
    const int n = __atomic_load_n(&g_count_accumulator, __ATOMIC_SEQ_CST);
    g_barrier->arrive_and_wait();
    if (threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0) __atomic_store_n(&g_count_accumulator, 0, __ATOMIC_SEQ_CST);
    g_barrier->arrive_and_wait();
    return n;
}

template <class T>
static inline T atomicAdd(T* address, T value) {
    return __atomic_fetch_add(address, value, __ATOMIC_SEQ_CST);
}

static inline unsigned short vk_f32_to_f16(float f) {
    _Float16 h = (_Float16)f;
    unsigned short bits;
    std::memcpy(&bits, &h, 2);
    return bits;
}
static inline float vk_f16_to_f32(unsigned short bits) {
    _Float16 h;
    std::memcpy(&h, &bits, 2);
    return (float)h;
}
static inline float vk_mul(float a, float b) { return a * b; }
static inline float vk_add(float a, float b) { return a + b; }
static inline unsigned vk_float_bits(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}

#include "preprocess.cu"
#include "mask.cu"
#include "gather.cu"
#include "sampling.cu"

template <class... A, std::size_t... I>
static void invoke(void (*kernel)(A...), void** params, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(params[I])...);
}

template <class... A>
static void run(void (*kernel)(A...), dim3 grid, dim3 block, void** params) {
    gridDim = grid;
    blockDim = block;
    const unsigned threads = block.x * block.y * block.z;
    std::barrier<> barrier(threads);
    g_barrier = &barrier;
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t) {
        pool.emplace_back([=, &barrier]() {
            threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
            for (unsigned bz = 0; bz < grid.z; ++bz)
                for (unsigned by = 0; by < grid.y; ++by)
                    for (unsigned bx = 0; bx < grid.x; ++bx) {
                        blockIdx = {bx, by, bz};
                        invoke(kernel, params, std::index_sequence_for<A...>{});
                        barrier.arrive_and_wait();  // the next block reuses the static shared memory
                    }
        });
    }
    for (auto& th : pool) th.join();
    g_barrier = nullptr;
}

// 0: launched; 1: unknown kernel name.
extern "C" int emu_launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                          unsigned bz, void** params) {
    const dim3 grid{gx, gy, gz}, block{bx, by, bz};
    const std::string k(name);
    if (k == "vk_preprocess") run(vk_preprocess, grid, block, params);
    else if (k == "vk_mask_postprocess") run(vk_mask_postprocess, grid, block, params);
    else if (k == "vk_overlay") run(vk_overlay, grid, block, params);
    else if (k == "vk_gather_rows") run(vk_gather_rows, grid, block, params);
    else if (k == "vk_sample") run(vk_sample, grid, block, params);
    else return 1;
    return 0;
}
