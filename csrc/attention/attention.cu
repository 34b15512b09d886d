// CUDA schedule of the fused attention-map control kernel, tiled as in flash attention: a block takes
// kRows query rows (one per thread) of one (element, head); the keys and values pass through shared
// memory a tile at a time while each thread keeps an online softmax (running max, sum and the weighted
// sum of values) in registers. Nothing of size [Q, K] exists unless the map store asks for it.
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

constexpr int kRows = 64;          // query rows per block, one per thread
constexpr int kMaxKeyTile = 64;    // keys per shared-memory tile, at most
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

// The row of queries in registers: kHead bounds the head dims at compile time so the arrays stay
// in registers (the loops are unrolled with a guard for the actual size).
template <typename T, int kHead> struct Row {
    T x[kHead];
    __device__ void load(const T* p, int n) {
        GK_UNROLL for (int d = 0; d < kHead; ++d) x[d] = d < n ? p[d] : T(0);
    }
};

template <typename T, int kHead, typename Shared>
__device__ T dot_shared(const Row<T, kHead>& q, const Shared& s, int64_t at, int D) {
    T acc = 0;
    GK_UNROLL for (int d = 0; d < kHead; ++d) if (d < D) acc += q.x[d] * s[at + d];
    return acc;
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

// One pass of a block: every thread's row of out gets (accumulate ? += : =) the softmax-weighted sum of
// the pass's values; returns the row's final statistics (for the store pass). Every thread of the block
// calls it (the barriers), rows past Q only help to load the tiles.
template <typename T, int kHead, typename Shared>
__device__ RowStats<T> softmax_pass(const Pass<T>& p, const AttnArgs<T>& a, int row, bool active, int KT, T* out,
                                    bool accumulate, const Shared& s) {
    const int D = a.D, Dv = a.Dv;
    Row<T, kHead> q;
    q.load(p.q + (int64_t)row * D, D);
    T acc[kHead];
    GK_UNROLL for (int d = 0; d < kHead; ++d) acc[d] = 0;
    RowStats<T> st;
    const int64_t vals = (int64_t)KT * D;
    for (int n0 = 0; n0 < a.K; n0 += KT) {
        const int nt = min(KT, a.K - n0);
        __syncthreads();  // the previous tile is consumed
        stage_tile(p, n0, nt, KT, D, Dv, true, s);
        __syncthreads();
        if (!active) continue;
        for (int j = 0; j < nt; ++j) {
            const T sc = a.scale * dot_shared(q, s, (int64_t)j * D, D);
            const int64_t vj = vals + (int64_t)j * Dv;
            if (sc > st.m) {  // a new maximum rescales what was summed so far
                const T r = attn_exp(st.m - sc);
                st.l = st.l * r + T(1);
                GK_UNROLL for (int d = 0; d < kHead; ++d) if (d < Dv) acc[d] = acc[d] * r + s[vj + d];
                st.m = sc;
            } else {
                const T e = softmax_num(sc, st.m);
                st.l += e;
                GK_UNROLL for (int d = 0; d < kHead; ++d) if (d < Dv) acc[d] += e * s[vj + d];
            }
        }
    }
    if (active) {
        const T inv = T(1) / st.l;
        GK_UNROLL for (int d = 0; d < kHead; ++d) if (d < Dv) out[d] = (accumulate ? out[d] : T(0)) + acc[d] * inv;
    }
    return st;
}

// The map store: every entry of the row's (edited) map from the final statistics, added to the store
// row (atomically: the heads of an element go to one row). own: the pass over the element's own keys
// whose probabilities the map reads directly (none for a cross edit that never reads its own map);
// base: the source's pass of a cross edit, whose probabilities at the edit's rows are recomputed.
template <typename T, int kHead, typename Shared>
__device__ void store_pass(const Pass<T>* own, RowStats<T> own_st, const Pass<T>* base, RowStats<T> base_st,
                           const AttnArgs<T>& a, int slot, int row, bool active, int KT, T* st_row, const Shared& s) {
    const int D = a.D;
    Row<T, kHead> q;
    if (own) q.load(own->q + (int64_t)row * D, D);
    const T inv_own = T(1) / own_st.l, inv_base = T(1) / base_st.l;
    const T* qb = base ? base->q + (int64_t)row * D : nullptr;
    auto base_p = [&](int w) {
        const T* kw = base->k + (int64_t)w * D;
        T sc = 0;
        for (int d = 0; d < D; ++d) sc += qb[d] * kw[d];
        return softmax_num(a.scale * sc, base_st.m) * inv_base;
    };
    for (int n0 = 0; n0 < a.K; n0 += KT) {
        const int nt = min(KT, a.K - n0);
        __syncthreads();
        if (own) stage_tile(*own, n0, nt, KT, D, a.Dv, false, s);
        __syncthreads();
        if (!active) continue;
        for (int j = 0; j < nt; ++j) {
            const T p_own = own ? softmax_num(a.scale * dot_shared(q, s, (int64_t)j * D, D), own_st.m) * inv_own : T(0);
            const T p = slot < 0 ? p_own : edited_prob(a.edit, slot, n0 + j, p_own, base_p);
            atomicAdd(st_row + n0 + j, p);
        }
    }
}

template <typename T, int kHead> __global__ void __launch_bounds__(kRows) attention_fwd_kernel(const AttnArgs<T> a, const int KT) {
    GK_DYNAMIC_SHARED(T, s);
    const int h = blockIdx.y, b = blockIdx.z;
    const int q = blockIdx.x * kRows + threadIdx.x;
    const bool active = q < a.Q;
    const int row = active ? q : a.Q - 1;
    const int H = a.H, Q = a.Q, K = a.K, D = a.D, Dv = a.Dv;
    const int src = a.route.src[b], slot = a.route.slot[b];
    const int64_t bh = (int64_t)b * H + h, sbh = src >= 0 ? (int64_t)src * H + h : bh;
    const T* v = a.v + bh * K * Dv;
    const Pass<T> own{a.q + bh * Q * D, a.k + bh * K * D, v, slot >= 0 ? a.edit.c + (int64_t)slot * K : nullptr};
    const Pass<T> source{a.q + sbh * Q * D, a.k + sbh * K * D, slot >= 0 ? a.edit_values + bh * K * Dv : v, nullptr};
    T* out = a.out + (bh * Q + row) * Dv;

    RowStats<T> own_st, src_st;
    const bool own_used = src < 0 || (slot >= 0 && slot_needs_own(a.edit, slot));
    if (own_used) own_st = softmax_pass<T, kHead>(own, a, row, active, KT, out, false, s);
    if (src >= 0) src_st = softmax_pass<T, kHead>(source, a, row, active, KT, out, own_used, s);

    if (a.store && a.route.store_idx[b] >= 0) {
        T* st_row = a.store + ((int64_t)a.route.store_idx[b] * Q + row) * K;
        if (slot >= 0)
            store_pass<T, kHead>(own_used ? &own : nullptr, own_st, &source, src_st, a, slot, row, active, KT, st_row, s);
        else if (src >= 0)  // map injection: the source's map
            store_pass<T, kHead>(&source, src_st, nullptr, src_st, a, -1, row, active, KT, st_row, s);
        else
            store_pass<T, kHead>(&own, own_st, nullptr, own_st, a, -1, row, active, KT, st_row, s);
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

template <typename T, int kHead> void launch_tiled(const AttnArgs<T>& a, void* stream) {
    const size_t per_key = size_t(a.D + a.Dv) * sizeof(T);
    const int KT = int(std::min<size_t>(kMaxKeyTile, kSharedBytes / per_key));
    const dim3 grid((a.Q + kRows - 1) / kRows, a.H, a.route.B);
    launch(attention_fwd_kernel<T, kHead>, grid, kRows, KT * per_key, stream, a, KT);
}

}  // namespace

template <typename T> void attention_fwd_cuda(const AttnArgs<T>& a, void* stream) {
    // attention_ops.cpp checks these first with a message for the user; the launcher refuses too, since
    // the kernel's registers hold one row of each (and returning would leave `out` uninitialised).
    if (a.D < 1 || a.D > kCudaMaxHead || a.Dv < 1 || a.Dv > kCudaMaxHead)
        throw std::invalid_argument("attention_fwd_cuda: head dims " + std::to_string(a.D) + ", " + std::to_string(a.Dv) +
                                    " outside 1.." + std::to_string(kCudaMaxHead));
    if (a.edit.col_ptr) {
        if (!a.edit_values) throw std::invalid_argument("attention_fwd_cuda: an edit needs the edit_values workspace");
        launch(edit_values_kernel<T>, dim3((a.Dv + 63) / 64, a.H, a.route.B), 64, 0, stream, a);
    }
    // Register rows sized for the head dims of the usual models (SD: 40/64/80/160).
    const int head = std::max(a.D, a.Dv);
    if (head <= 64) launch_tiled<T, 64>(a, stream);
    else if (head <= 160) launch_tiled<T, 160>(a, stream);
    else launch_tiled<T, kCudaMaxHead>(a, stream);
}

template void attention_fwd_cuda<float>(const AttnArgs<float>&, void*);
template void attention_fwd_cuda<double>(const AttnArgs<double>&, void*);

}  // namespace gk::attn
