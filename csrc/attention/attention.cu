// CUDA schedule of the fused attention-map control kernel, tiled as in flash attention: a block takes
// kRows query rows of one (element, head), each row split over 1..8 threads by head channel; the keys
// and values pass through shared memory a tile at a time while each row keeps an online softmax
// (running max, sum and the weighted sum of values) in registers. Nothing of size [Q, K] exists unless
// the map store asks for it.
//
// The edit is applied to the values instead of the maps (attention_math.h's formula, reassociated):
//     P_b V_b = own_b (c_t * V_b) + own_{src} (W_t V_b)
// so an edited element is two softmax passes, over its own scores with values c_t * V_b and over its
// source's scores with values U = W_t V_b (edit_values_kernel, before the main kernel). Each pass is an
// online softmax; neither needs the other's normalisation. Only the map store needs every entry of the
// edited map, so a store pass recomputes them from the final row statistics.
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "attention.h"
#include "gk_launch.cuh"

#ifdef __CUDACC__
#define GK_UNROLL _Pragma("unroll")
#else
#define GK_UNROLL
#endif

namespace gk::attn {
namespace {

constexpr int kRows = 64;         // query rows per block
constexpr int kChan = 32;         // head channels a thread holds: a row is split over G = 1..8 threads
constexpr int kMaxKeyTile = 64;   // keys per shared-memory tile, at most
constexpr size_t kSharedBytes = 48 * 1024;  // the dynamic shared memory every architecture grants by default

// One softmax-weighted sum over a row of keys: out = sum_n softmax(scale * q . k_n) * vals_n, where
// vals_n = col_scale[n] * v_n when col_scale is given.
template <typename T> struct Pass {
    const T* q;          // [Q, D] this element's (or the source's) queries
    const T* k;          // [K, D]
    const T* v;          // [K, Dv]
    const T* col_scale;  // [K] or nullptr
};

// Running statistics of an online softmax (Milakov & Gimelshein 2018).
template <typename T> struct RowStats {
    T m = -INFINITY, l = 0;
};

// The threads of one query row: G consecutive lanes of a warp, lane g holding channels g, g + G, ...
// (at most kChan of them, in registers: the loops over them are unrolled). Every lane of the group ends
// a sum with the same bits (a butterfly adds the same two values on both sides).
template <int G> struct Lanes {
    int g;
    __device__ Lanes() : g(threadIdx.x % G) {}
    __device__ int chan(int i) const { return g + G * i; }
    template <typename T> __device__ T sum(T x) const {
        GK_UNROLL for (int off = G / 2; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off, G);
        return x;
    }
};

template <typename T, int G> __device__ void load_row(const Lanes<G>& ln, const T* p, int n, T (&x)[kChan]) {
    GK_UNROLL for (int i = 0; i < kChan; ++i) x[i] = ln.chan(i) < n ? p[ln.chan(i)] : T(0);
}

// scale * q . k for the key row at `at` of an array (shared or global), summed over the group's lanes.
template <typename T, int G, typename Array>
__device__ T score(const Lanes<G>& ln, const T (&q)[kChan], const Array& k, int64_t at, int D, T scale) {
    T acc = 0;
    GK_UNROLL for (int i = 0; i < kChan; ++i) if (ln.chan(i) < D) acc += q[i] * k[at + ln.chan(i)];
    return scale * ln.sum(acc);
}

// Stages keys [n0, n0 + nt) of a pass (keys, and values scaled by col_scale) in shared memory:
// keys at [0, KT*D), values at [KT*D, KT*(D+Dv)).
template <typename T, typename Shared>
__device__ void stage_tile(const Pass<T>& p, int n0, int nt, int KT, int D, int Dv, bool values, const Shared& s) {
    const int64_t nk = (int64_t)nt * D, nv = (int64_t)nt * Dv;
    for (int64_t i = threadIdx.x; i < nk; i += blockDim.x) s[i] = p.k[(int64_t)n0 * D + i];
    if (!values) return;
    for (int64_t i = threadIdx.x; i < nv; i += blockDim.x) {
        const T val = p.v[(int64_t)n0 * Dv + i];
        s[(int64_t)KT * D + i] = p.col_scale ? p.col_scale[n0 + i / Dv] * val : val;
    }
}

// One pass of a block: every row of out gets (accumulate ? += : =) the softmax-weighted sum of the
// pass's values; returns the row's final statistics (for the store pass). Every thread of the block
// runs all of it (barriers, and warp sums that need every lane); rows past Q compute the last row
// again and write nothing.
template <typename T, int G, typename Shared>
__device__ RowStats<T> softmax_pass(const Pass<T>& p, const AttnArgs<T>& a, int row, bool active, int KT, T* out,
                                    bool accumulate, const Shared& s) {
    const int D = a.D, Dv = a.Dv;
    const Lanes<G> ln;
    T q[kChan], acc[kChan];
    load_row(ln, p.q + (int64_t)row * D, D, q);
    GK_UNROLL for (int i = 0; i < kChan; ++i) acc[i] = 0;
    RowStats<T> st;
    const int64_t vals = (int64_t)KT * D;
    for (int n0 = 0; n0 < a.K; n0 += KT) {
        const int nt = min(KT, a.K - n0);
        __syncthreads();  // the previous tile is consumed
        stage_tile(p, n0, nt, KT, D, Dv, true, s);
        __syncthreads();
        for (int j = 0; j < nt; ++j) {
            const T sc = score(ln, q, s, (int64_t)j * D, D, a.scale);
            const int64_t vj = vals + (int64_t)j * Dv;
            if (sc > st.m) {  // a new maximum rescales what was summed so far
                const T r = attn_exp(st.m - sc);
                st.l = st.l * r + T(1);
                GK_UNROLL for (int i = 0; i < kChan; ++i) if (ln.chan(i) < Dv) acc[i] = acc[i] * r + s[vj + ln.chan(i)];
                st.m = sc;
            } else {
                const T e = softmax_num(sc, st.m);
                st.l += e;
                GK_UNROLL for (int i = 0; i < kChan; ++i) if (ln.chan(i) < Dv) acc[i] += e * s[vj + ln.chan(i)];
            }
        }
    }
    if (active) {
        const T inv = T(1) / st.l;
        GK_UNROLL for (int i = 0; i < kChan; ++i) {
            const int d = ln.chan(i);
            if (d < Dv) out[d] = (accumulate ? out[d] : T(0)) + acc[i] * inv;
        }
    }
    return st;
}

// The map store: every entry of the row's (edited) map from the final statistics, added to the store
// row (atomically: the heads of an element go to one row). own: the pass whose probabilities the map
// reads directly; base: the source's pass of a cross edit, whose probabilities at the edit's rows are
// recomputed from global memory.
template <typename T, int G, typename Shared>
__device__ void store_pass(const Pass<T>* own, RowStats<T> own_st, const Pass<T>* base, RowStats<T> base_st,
                           const AttnArgs<T>& a, int slot, int row, bool active, int KT, T* st_row, const Shared& s) {
    const int D = a.D;
    const Lanes<G> ln;
    T q[kChan], qb[kChan];
    load_row(ln, own ? own->q + (int64_t)row * D : nullptr, own ? D : 0, q);
    load_row(ln, base ? base->q + (int64_t)row * D : nullptr, base ? D : 0, qb);
    const T inv_own = T(1) / own_st.l, inv_base = T(1) / base_st.l;
    auto base_p = [&](int w) { return softmax_num(score(ln, qb, base->k, (int64_t)w * D, D, a.scale), base_st.m) * inv_base; };
    for (int n0 = 0; n0 < a.K; n0 += KT) {
        const int nt = min(KT, a.K - n0);
        __syncthreads();
        if (own) stage_tile(*own, n0, nt, KT, D, a.Dv, false, s);
        __syncthreads();
        for (int j = 0; j < nt; ++j) {
            const T p_own = own ? softmax_num(score(ln, q, s, (int64_t)j * D, D, a.scale), own_st.m) * inv_own : T(0);
            const T p = slot < 0 ? p_own : edited_prob(a.edit, slot, n0 + j, p_own, base_p);
            if (active && ln.g == 0) atomicAdd(st_row + n0 + j, p);
        }
    }
}

template <typename T, int G>
__global__ void __launch_bounds__(kRows * G) attention_fwd_kernel(const AttnArgs<T> a, const int KT) {
    GK_DYNAMIC_SHARED(T, s);
    const int h = blockIdx.y, b = blockIdx.z;
    const int q = blockIdx.x * kRows + threadIdx.x / G;
    const bool active = q < a.Q;
    const int row = active ? q : a.Q - 1;
    const int H = a.H, Q = a.Q, K = a.K, D = a.D, Dv = a.Dv;
    const int src = a.route.src[b], slot = a.route.slot[b];
    const int64_t bh = (int64_t)b * H + h, sbh = src >= 0 ? (int64_t)src * H + h : bh;
    const T* v = a.v + bh * K * Dv;
    const Pass<T> own{a.q + bh * Q * D, a.k + bh * K * D, v, slot >= 0 ? a.edit.c + (int64_t)slot * K : nullptr};
    const Pass<T> source{a.q + sbh * Q * D, a.k + sbh * K * D, slot >= 0 ? a.edit_values + bh * K * Dv : v, nullptr};
    T* out = a.out + (bh * Q + row) * Dv;

    // Up to two passes (one call site each for the passes and the store, so the kernel is compiled once).
    const bool own_used = src < 0 || (slot >= 0 && slot_needs_own(a.edit, slot));
    const Pass<T>* passes[2] = {own_used ? &own : &source, &source};
    const int n_passes = own_used && src >= 0 ? 2 : 1;
    RowStats<T> st[2];
    for (int i = 0; i < n_passes; ++i) st[i] = softmax_pass<T, G>(*passes[i], a, row, active, KT, out, i > 0, s);

    if (a.store && a.route.store_idx[b] >= 0) {
        // The map a stored row reads directly (none for a cross edit that never reads its own map) and, for
        // a cross edit, the source's pass whose probabilities the edit gathers.
        const Pass<T>* direct = slot < 0 || own_used ? passes[0] : nullptr;
        const Pass<T>* base = slot >= 0 ? &source : nullptr;
        T* st_row = a.store + ((int64_t)a.route.store_idx[b] * Q + row) * K;
        store_pass<T, G>(direct, st[0], base, st[n_passes - 1], a, slot, row, active, KT, st_row, s);
    }
}

// U = W_t V_b for each edited element and head (the cross edit moved onto the values): one thread per
// value channel walks the edit's columns in order (deterministic sums, no atomics).
template <typename T> __global__ void edit_values_kernel(const AttnArgs<T> a) {
    const int d = blockIdx.x * blockDim.x + threadIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int slot = a.route.slot[b];
    if (slot < 0 || d >= a.Dv) return;
    const int K = a.K, Dv = a.Dv;
    const int64_t bh = (int64_t)b * a.H + h;
    T* u = a.edit_values + bh * K * Dv + d;
    const T* v = a.v + bh * K * Dv + d;
    for (int w = 0; w < K; ++w) u[(int64_t)w * Dv] = 0;
    const int32_t* cp = a.edit.col_ptr + (int64_t)slot * (K + 1);
    for (int n = 0; n < K; ++n) {
        const T vn = v[(int64_t)n * Dv];
        for (int32_t j = cp[n]; j < cp[n + 1]; ++j) u[(int64_t)a.edit.rows[j] * Dv] += a.edit.vals[j] * vn;
    }
}

template <typename T, int G> void launch_tiled(const AttnArgs<T>& a, void* stream) {
    const size_t per_key = size_t(a.D + a.Dv) * sizeof(T);
    const int KT = int(std::min<size_t>(kMaxKeyTile, kSharedBytes / per_key));
    const dim3 grid((a.Q + kRows - 1) / kRows, a.H, a.route.B);
    launch(attention_fwd_kernel<T, G>, grid, kRows * G, KT * per_key, stream, a, KT);
}

}  // namespace

template <typename T> void attention_fwd_cuda(const AttnArgs<T>& a, void* stream) {
    // attention_ops.cpp checks these first with a message for the user; the launcher refuses too, since
    // the kernel's registers hold one row of each (and returning would leave `out` uninitialised).
    static_assert(kCudaMaxHead == 8 * kChan, "eight threads of kChan channels hold a row of the largest head");
    if (a.D < 1 || a.D > kCudaMaxHead || a.Dv < 1 || a.Dv > kCudaMaxHead)
        throw std::invalid_argument("attention_fwd_cuda: head dims " + std::to_string(a.D) + ", " + std::to_string(a.Dv) +
                                    " outside 1.." + std::to_string(kCudaMaxHead));
    if (a.edit.col_ptr) {
        if (!a.edit_values) throw std::invalid_argument("attention_fwd_cuda: an edit needs the edit_values workspace");
        launch(edit_values_kernel<T>, dim3((a.Dv + 63) / 64, a.H, a.route.B), 64, 0, stream, a);
    }
    // As few threads per row as hold its head dims (SD's 40/80/160: 2/4/8 threads of 20 channels).
    const int head = std::max(a.D, a.Dv);
    if (head <= kChan) launch_tiled<T, 1>(a, stream);
    else if (head <= 2 * kChan) launch_tiled<T, 2>(a, stream);
    else if (head <= 4 * kChan) launch_tiled<T, 4>(a, stream);
    else launch_tiled<T, 8>(a, stream);
}

template void attention_fwd_cuda<float>(const AttnArgs<float>&, void*);
template void attention_fwd_cuda<double>(const AttnArgs<double>&, void*);

}  // namespace gk::attn
