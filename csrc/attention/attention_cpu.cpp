// CPU schedule of the fused attention-map control kernel (math: attention_math.h). OpenMP over query
// blocks (x heads when no map store is written): per block and head, each element's probability rows
// are computed once into a small per-thread buffer (scores, softmax), edited, optionally added to the
// map store, and multiplied by V. No [B*H, Q, K] map is ever materialised.
#include <algorithm>
#include <cstring>
#include <vector>

#include "attention.h"

namespace gk::attn {
namespace {

// s[j] = scale * q . kt[:, j] for the Kp (padded) keys; loop over keys innermost so that it vectorises.
template <typename T>
inline void row_scores(const T* __restrict q, const T* __restrict kt, int D, int Kp, T scale, T* __restrict s) {
#pragma omp simd
    for (int j = 0; j < Kp; ++j) s[j] = T(0);
    for (int d = 0; d < D; ++d) {
        const T qd = q[d];
        const T* __restrict kr = kt + (int64_t)d * Kp;
#pragma omp simd
        for (int j = 0; j < Kp; ++j) s[j] += qd * kr[j];
    }
#pragma omp simd
    for (int j = 0; j < Kp; ++j) s[j] *= scale;
}

// Softmax over the first K entries (diffusers / P2P: over keys); padding entries are zeroed.
template <typename T>
inline void row_softmax(T* __restrict s, int K, int Kp) {
    T m = s[0];
#pragma omp simd reduction(max : m)
    for (int j = 0; j < K; ++j) m = s[j] > m ? s[j] : m;
    T sum = T(0);
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < K; ++j) {
        const T e = softmax_num(s[j], m);
        s[j] = e;
        sum += e;
    }
    const T inv = T(1) / sum;
#pragma omp simd
    for (int j = 0; j < K; ++j) s[j] *= inv;
    for (int j = K; j < Kp; ++j) s[j] = T(0);
}

// acc[e] = sum_j p[j] * vp[j, e] over the padded value width (a multiple of the SIMD width).
template <typename T>
inline void row_pv(const T* __restrict p, const T* __restrict vp, int K, int Dvp, T* __restrict acc) {
#pragma omp simd
    for (int e = 0; e < Dvp; ++e) acc[e] = T(0);
    for (int j = 0; j < K; ++j) {
        const T pj = p[j];
        const T* __restrict vr = vp + (int64_t)j * Dvp;
#pragma omp simd
        for (int e = 0; e < Dvp; ++e) acc[e] += pj * vr[e];
    }
}

}  // namespace

template <typename T>
void attention_fwd_cpu(const AttnArgs<T>& a) {
    const int B = a.route.B, H = a.H, Q = a.Q, K = a.K, D = a.D, Dv = a.Dv, Kp = a.Kp, Dvp = a.Dvp;
    const bool has_edit = a.edit.col_ptr != nullptr;
    // Which elements' own maps are computed: those used as they are, those read as a source, and edited
    // elements whose own map still has weight (c != 0).
    std::vector<char> need_own(B, 0);
    for (int b = 0; b < B; ++b) {
        const int s = a.route.src[b], t = a.route.slot[b];
        if (s < 0) need_own[b] = 1;
        else need_own[s] = 1;
        if (t >= 0 && has_edit && slot_needs_own(a.edit, t)) need_own[b] = 1;
    }
    bool any_store = false;
    for (int b = 0; b < B; ++b) any_store |= (a.store != nullptr && a.route.store_idx[b] >= 0);

    // Rows per block: the per-thread buffer (B x QB x Kp) stays within ~256 KiB.
    const int64_t row_bytes = (int64_t)B * Kp * sizeof(T);
    const int QB = (int)std::clamp<int64_t>((256 * 1024) / std::max<int64_t>(row_bytes, 1), 1, 64);
    const int nqb = (Q + QB - 1) / QB;
    // A store row sums over heads: one item owns all heads of its query block, so no two threads add to
    // the same store entry.
    const int hs = any_store ? H : 1;
    const int64_t items = (int64_t)nqb * (H / hs);

#pragma omp parallel
    {
        std::vector<T> own((size_t)B * QB * Kp), edited((size_t)QB * Kp), acc(Dvp);
#pragma omp for schedule(dynamic)
        for (int64_t it = 0; it < items; ++it) {
            const int qb = int(it % nqb), h0 = int(it / nqb) * hs;
            const int q0 = qb * QB, nr = std::min(QB, Q - q0);
            for (int h = h0; h < h0 + hs; ++h) {
                for (int b = 0; b < B; ++b) {
                    T* ob = own.data() + (size_t)b * QB * Kp;
                    if (!need_own[b]) {
                        std::memset(ob, 0, sizeof(T) * (size_t)nr * Kp);
                        continue;
                    }
                    const int64_t bh = (int64_t)b * H + h;
                    const T* kt = a.k + bh * D * Kp;
                    for (int r = 0; r < nr; ++r) {
                        row_scores(a.q + (bh * Q + q0 + r) * D, kt, D, Kp, a.scale, ob + (size_t)r * Kp);
                        row_softmax(ob + (size_t)r * Kp, K, Kp);
                    }
                }
                for (int b = 0; b < B; ++b) {
                    const int s = a.route.src[b], t = a.route.slot[b];
                    const T* pb;
                    if (s < 0) {
                        pb = own.data() + (size_t)b * QB * Kp;
                    } else if (t < 0) {
                        pb = own.data() + (size_t)s * QB * Kp;  // self-map injection
                    } else {
                        const T* ob = own.data() + (size_t)b * QB * Kp;
                        const T* os = own.data() + (size_t)s * QB * Kp;
                        for (int r = 0; r < nr; ++r) {
                            const T* osr = os + (size_t)r * Kp;
                            const T* obr = ob + (size_t)r * Kp;
                            T* er = edited.data() + (size_t)r * Kp;
                            for (int n = 0; n < K; ++n)
                                er[n] = edited_prob(a.edit, t, n, obr[n], [osr](int w) { return osr[w]; });
                            for (int n = K; n < Kp; ++n) er[n] = T(0);
                        }
                        pb = edited.data();
                    }
                    const int si = a.store ? a.route.store_idx[b] : -1;
                    if (si >= 0) {
                        for (int r = 0; r < nr; ++r) {
                            T* st = a.store + ((int64_t)si * Q + q0 + r) * K;
                            const T* pr = pb + (size_t)r * Kp;
#pragma omp simd
                            for (int n = 0; n < K; ++n) st[n] += pr[n];
                        }
                    }
                    const int64_t bh = (int64_t)b * H + h;
                    const T* vp = a.v + bh * K * Dvp;
                    for (int r = 0; r < nr; ++r) {
                        row_pv(pb + (size_t)r * Kp, vp, K, Dvp, acc.data());
                        T* o = a.out + (bh * Q + q0 + r) * Dv;
                        std::memcpy(o, acc.data(), sizeof(T) * Dv);
                    }
                }
            }
        }
    }
}

template void attention_fwd_cpu<float>(const AttnArgs<float>&);
template void attention_fwd_cpu<double>(const AttnArgs<double>&);

}  // namespace gk::attn
