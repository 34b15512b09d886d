// CUDA schedule of the fused attention-map control kernel: one thread per (element, head, query row).
// Two passes over the keys: row statistics (max, sum) of the maps the row needs, then the edited
// probabilities (attention_math.h) times V, accumulated in registers; nothing of size [Q, K] is
// written unless the map store asks for it (atomically summed over heads).
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "attention.h"
#include "gk_launch.cuh"

namespace gk::attn {
namespace {

constexpr int kThreads = 128;

template <typename T> __device__ __forceinline__ T dot(const T* a, const T* b, int D) {
    T s = 0;
    for (int d = 0; d < D; ++d) s += a[d] * b[d];
    return s;
}

// Online max / sum of exp over one row of scores (Milakov & Gimelshein 2018).
template <typename T> __device__ void row_stats(const T* q, const T* k, int K, int D, T scale, T& m, T& l) {
    m = -INFINITY;
    l = 0;
    for (int n = 0; n < K; ++n) {
        const T s = scale * dot(q, k + (int64_t)n * D, D);
        if (s > m) {
            l = l * attn_exp(m - s) + T(1);
            m = s;
        } else {
            l += attn_exp(s - m);
        }
    }
}

template <typename T> __global__ void attention_fwd_kernel(const AttnArgs<T> a) {
    const int q = blockIdx.x * blockDim.x + threadIdx.x;
    const int h = blockIdx.y, b = blockIdx.z;
    if (q >= a.Q) return;
    const int H = a.H, Q = a.Q, K = a.K, D = a.D, Dv = a.Dv;
    const int64_t bh = (int64_t)b * H + h;
    const int src = a.route.src[b], slot = a.route.slot[b];
    const bool own_used = src < 0 || (slot >= 0 && slot_needs_own(a.edit, slot));

    const T* qo = a.q + (bh * Q + q) * D;
    const T* ko = a.k + bh * K * D;
    T mo = 0, lo = 1;
    if (own_used) row_stats(qo, ko, K, D, a.scale, mo, lo);
    const T* qs = nullptr;
    const T* ks = nullptr;
    T ms = 0, ls = 1;
    if (src >= 0) {
        const int64_t sbh = (int64_t)src * H + h;
        qs = a.q + (sbh * Q + q) * D;
        ks = a.k + sbh * K * D;
        row_stats(qs, ks, K, D, a.scale, ms, ls);
    }
    const T inv_lo = T(1) / lo, inv_ls = T(1) / ls;
    auto own_p = [&](int n) { return softmax_num(a.scale * dot(qo, ko + (int64_t)n * D, D), mo) * inv_lo; };
    auto base_p = [&](int w) { return softmax_num(a.scale * dot(qs, ks + (int64_t)w * D, D), ms) * inv_ls; };

    T acc[kCudaMaxDv];
    for (int d = 0; d < Dv; ++d) acc[d] = 0;
    const T* v = a.v + bh * K * Dv;
    T* st = (a.store && a.route.store_idx[b] >= 0) ? a.store + ((int64_t)a.route.store_idx[b] * Q + q) * K : nullptr;
    for (int n = 0; n < K; ++n) {
        T p;
        if (src < 0) p = own_p(n);
        else if (slot < 0) p = base_p(n);
        else p = edited_prob(a.edit, slot, n, own_used ? own_p(n) : T(0), base_p);
        const T* vr = v + (int64_t)n * Dv;
        for (int d = 0; d < Dv; ++d) acc[d] += p * vr[d];
        if (st) atomicAdd(st + n, p);
    }
    T* o = a.out + (bh * Q + q) * Dv;
    for (int d = 0; d < Dv; ++d) o[d] = acc[d];
}

}  // namespace

template <typename T> void attention_fwd_cuda(const AttnArgs<T>& a, void* stream) {
    // attention_ops.cpp checks this first with a message for the user; the launcher refuses too, since
    // the kernel would overrun its accumulators (and returning would leave `out` uninitialised).
    if (a.Dv < 1 || a.Dv > kCudaMaxDv)
        throw std::invalid_argument("attention_fwd_cuda: value head dim " + std::to_string(a.Dv) + " outside 1.." +
                                    std::to_string(kCudaMaxDv));
    const dim3 grid((a.Q + kThreads - 1) / kThreads, a.H, a.route.B);
    launch(attention_fwd_kernel<T>, grid, kThreads, 0, stream, a);
}

template void attention_fwd_cuda<float>(const AttnArgs<float>&, void*);
template void attention_fwd_cuda<double>(const AttnArgs<double>&, void*);

}  // namespace gk::attn
