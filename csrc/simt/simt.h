// The SIMT harness: the CUDA C++ that the .cu files use, implemented on the CPU, so that the very same
// kernels are compiled a second time as C++ (g++ -x c++ -DGK_SIMT) and executed by the tests without a
// GPU. It is test-only: gsplat_kit._C never includes it (csrc/simt/build.py builds the harness module).
//
// Execution model. Blocks run one after another. The threads of a block are fibers on the calling OS
// thread, each running until it reaches a synchronisation point (a block barrier or a warp operation);
// when every thread waits, the waiting group is released together. So __syncthreads is a real barrier,
// warp shuffles and votes exchange real values between the 32 lanes of a warp, and a fiber that reads
// shared memory before the barrier that should protect it sees what the other threads have not yet
// written. Everything a GPU would leave undefined or hang on fails the launch with a message instead:
// a barrier that not every thread reaches (or reaches at another call site), a warp operation whose
// mask names a lane that has exited, does not exist or is elsewhere, a shuffle from a lane outside the
// mask, dynamic shared memory indexed past its size, a block larger than 1024 threads or more than
// 48 KiB of dynamic shared memory.
//
// Because threads are cooperative fibers on one OS thread, atomics are plain read-modify-writes and
// `__shared__` variables are `static thread_local` (one copy per launching OS thread, blocks in turn).
// Math intrinsics are the C++ ones: the harness checks the schedule (indexing, synchronisation, shared
// memory, reductions), while gk_exp and friends take their host branch (gk_common.h) as the CPU kernels do.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <source_location>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#ifndef GK_SIMT
#error "csrc/simt/simt.h is the SIMT harness runtime: compile with -DGK_SIMT (csrc/simt/build.py)"
#endif

// ---- CUDA's declaration specifiers and launch types -------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static thread_local

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x = 1, y = 1, z = 1;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using cudaStream_t = void*;
enum cudaError_t { cudaSuccess = 0 };
inline cudaError_t cudaGetLastError() { return cudaSuccess; }

extern thread_local uint3 threadIdx, blockIdx;
extern thread_local dim3 blockDim, gridDim;
constexpr int warpSize = 32;

namespace gk::simt {

using Site = std::source_location;

enum class Sync { Barrier, BarrierCount, BarrierAnd, BarrierOr };
enum class WarpOp { Shfl, ShflUp, ShflDown, ShflXor, Any, All, Ballot };

// Called from kernel threads: wait at the block barrier / the warp operation, return the group's result.
int block_sync(Sync kind, int predicate, const Site& site);
uint64_t warp_sync(WarpOp op, unsigned mask, uint64_t bits, int arg, int width, const Site& site);
// Fails the running launch from inside a kernel thread (never returns).
[[noreturn]] void fail(const std::string& what);

// The dynamic shared memory of the running block and its size in bytes.
unsigned char* dynamic_shared_base();
size_t dynamic_shared_bytes();

// A bounds-checked view of the block's dynamic shared memory as an array of T (GK_DYNAMIC_SHARED).
template <typename T> class SharedArray {
public:
    SharedArray() : base_(reinterpret_cast<T*>(dynamic_shared_base())), n_(dynamic_shared_bytes() / sizeof(T)) {}
    T& operator[](int64_t i) const {
        if (i < 0 || size_t(i) >= n_)
            fail("dynamic shared memory indexed at element " + std::to_string(i) + " of " + std::to_string(n_) +
                 " (" + std::to_string(dynamic_shared_bytes()) + " bytes, elements of " + std::to_string(sizeof(T)) + ")");
        return base_[i];
    }

private:
    T* base_;
    size_t n_;
};
template <typename T> SharedArray<T> dynamic_shared() { return SharedArray<T>(); }

// Runs a kernel over the grid; throws std::runtime_error naming the block and thread when it fails.
using Body = void (*)(void* ctx);
void run_grid(dim3 grid, dim3 block, size_t smem, Body body, void* ctx);

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, Args&&... args) {
    struct Call {
        void (*kernel)(Params...);
        std::tuple<std::decay_t<Params>...> params;  // each thread gets the same values, as on a GPU
    } call{kernel, std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)};
    run_grid(grid, block, smem, [](void* ctx) {
        auto* c = static_cast<Call*>(ctx);
        auto params = c->params;
        std::apply(c->kernel, params);
    }, &call);
}

template <typename T> uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp operations move at most 64 bits");
    uint64_t b = 0;
    std::memcpy(&b, &v, sizeof(T));
    return b;
}
template <typename T> T from_bits(uint64_t b) {
    T v;
    std::memcpy(&v, &b, sizeof(T));
    return v;
}

}  // namespace gk::simt

// ---- barriers, warp shuffles and votes --------------------------------------------------------------
inline void __syncthreads(const gk::simt::Site& s = gk::simt::Site::current()) {
    gk::simt::block_sync(gk::simt::Sync::Barrier, 0, s);
}
inline int __syncthreads_count(int p, const gk::simt::Site& s = gk::simt::Site::current()) {
    return gk::simt::block_sync(gk::simt::Sync::BarrierCount, p != 0, s);
}
inline int __syncthreads_and(int p, const gk::simt::Site& s = gk::simt::Site::current()) {
    return gk::simt::block_sync(gk::simt::Sync::BarrierAnd, p != 0, s);
}
inline int __syncthreads_or(int p, const gk::simt::Site& s = gk::simt::Site::current()) {
    return gk::simt::block_sync(gk::simt::Sync::BarrierOr, p != 0, s);
}

#define GK_SIMT_SHFL(NAME, OP)                                                                                 \
    template <typename T>                                                                                      \
    T NAME(unsigned mask, T v, int arg, int width = warpSize, const gk::simt::Site& s = gk::simt::Site::current()) { \
        return gk::simt::from_bits<T>(gk::simt::warp_sync(gk::simt::WarpOp::OP, mask, gk::simt::to_bits(v), arg, width, s)); \
    }
GK_SIMT_SHFL(__shfl_sync, Shfl)
GK_SIMT_SHFL(__shfl_up_sync, ShflUp)
GK_SIMT_SHFL(__shfl_down_sync, ShflDown)
GK_SIMT_SHFL(__shfl_xor_sync, ShflXor)
#undef GK_SIMT_SHFL

inline int __any_sync(unsigned mask, int p, const gk::simt::Site& s = gk::simt::Site::current()) {
    return int(gk::simt::warp_sync(gk::simt::WarpOp::Any, mask, p != 0, 0, warpSize, s));
}
inline int __all_sync(unsigned mask, int p, const gk::simt::Site& s = gk::simt::Site::current()) {
    return int(gk::simt::warp_sync(gk::simt::WarpOp::All, mask, p != 0, 0, warpSize, s));
}
inline unsigned __ballot_sync(unsigned mask, int p, const gk::simt::Site& s = gk::simt::Site::current()) {
    return unsigned(gk::simt::warp_sync(gk::simt::WarpOp::Ballot, mask, p != 0, 0, warpSize, s));
}

// ---- atomics (threads are cooperative fibers: a read-modify-write is never interrupted) -------------
template <typename T> T atomicAdd(T* p, T v) {
    const T old = *p;
    *p = old + v;
    return old;
}
template <typename T> T atomicMax(T* p, T v) {
    const T old = *p;
    *p = old < v ? v : old;
    return old;
}
template <typename T> T atomicMin(T* p, T v) {
    const T old = *p;
    *p = v < old ? v : old;
    return old;
}
template <typename T> T atomicExch(T* p, T v) {
    const T old = *p;
    *p = v;
    return old;
}
template <typename T> T atomicCAS(T* p, T compare, T v) {
    const T old = *p;
    if (old == compare) *p = v;
    return old;
}

// ---- math intrinsics ---------------------------------------------------------------------------------
template <typename T> inline T min(T a, T b) { return b < a ? b : a; }
template <typename T> inline T max(T a, T b) { return a < b ? b : a; }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
