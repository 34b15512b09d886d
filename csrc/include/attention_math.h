// Math of the fused attention-map control kernel (Prompt-to-Prompt, Hertz et al. ICLR 2023), shared by
// the CPU (csrc/attention/attention_cpu.cpp) and CUDA (csrc/attention/attention.cu) schedules.
//
// For one attention layer and batch element b (heads h, query q, key n) the kernel computes
//     own_b[q, :] = softmax(scale * Q_b[q] . K_b^T)
//     P_b = own_b                                          (no edit: src[b] = -1)
//     P_b = own_{src[b]}                                   (map injection: src[b] >= 0, slot[b] = -1)
//     P_b[q, n] = own_b[q, n] * c_t[n] + sum_w own_{src[b]}[q, w] * W_t[w, n]   (cross edit, t = slot[b])
//     out_b = P_b V_b
// The cross-edit form covers every P2P edit of one step at once (see gsplat_kit/edit/plan.py):
//   replace  W = alpha * eq * M,            c = 1 - alpha
//   refine   W = alpha * eq * onehot * a,   c = 1 - alpha + alpha * eq * (1 - a)
// W is sparse (a token maps from one or a few tokens) and is passed in compressed-column form.
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define GK_ATTN_HD __host__ __device__ __forceinline__
#else
#define GK_ATTN_HD inline
#endif

namespace gk::attn {

// Most batch elements one call takes (the per-element tables travel by value to the CUDA kernel).
constexpr int kMaxBatch = 64;

// Per-element routing of one call: which element's map is the base, which edit slot, which store row.
struct Routing {
    int B;
    int32_t src[kMaxBatch];        // -1: own map; else the element whose map is used
    int32_t slot[kMaxBatch];       // -1: no cross edit; else the edit slot t
    int32_t store_idx[kMaxBatch];  // -1: not stored; else the row of the map store it is added to
};

// The cross edit of every slot, compressed by column: column n of slot t holds the entries
// rows[col_ptr[t*(K+1)+n] .. col_ptr[t*(K+1)+n+1]) with weights vals[...]; c[t*K + n] scales the own map.
template <typename T> struct EditCols {
    const int32_t* col_ptr;
    const int32_t* rows;
    const T* vals;
    const T* c;
    int K;
};

// exp of a score minus its row maximum. The CPU's float softmax has a vector version of its own
// (attention_cpu.cpp); this one serves the GPU (hardware expf) and float64.
GK_ATTN_HD float attn_exp(float x) { return expf(x); }
GK_ATTN_HD double attn_exp(double x) { return exp(x); }

// Softmax numerator of one score given the row maximum (P2P and diffusers: softmax over keys).
template <typename T> GK_ATTN_HD T softmax_num(T score, T row_max) { return attn_exp(score - row_max); }

// One entry of an edited cross-attention map (the formula in the header comment). base(w) returns the
// source map's probability at key w for the same head and query.
template <typename T, typename BaseFn>
GK_ATTN_HD T edited_prob(const EditCols<T>& e, int slot, int n, T own, BaseFn base) {
    const int32_t* cp = e.col_ptr + (int64_t)slot * (e.K + 1);
    T acc = own * e.c[(int64_t)slot * e.K + n];
    for (int32_t j = cp[n]; j < cp[n + 1]; ++j) acc += base(e.rows[j]) * e.vals[j];
    return acc;
}

// Whether slot t reads the element's own map at all (any c != 0); if not, its scores are never computed.
template <typename T> GK_ATTN_HD bool slot_needs_own(const EditCols<T>& e, int slot) {
    for (int n = 0; n < e.K; ++n)
        if (e.c[(int64_t)slot * e.K + n] != T(0)) return true;
    return false;
}

}  // namespace gk::attn
