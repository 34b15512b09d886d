// CPU schedule of the fused attention-map control kernel (math: attention_math.h). OpenMP over query
// blocks (and heads); inside, every batch element, sources first, so that the elements that take
// a source's map find its rows at hand. Only blocks of rows ever exist ([QB, K] per source plus two
// scratch blocks per thread, sized to stay in L2), never a [Q, K] map; scores are skipped for elements
// that never read their own map (map injection, full word swap). The two products (Q K^T and P V) are
// GEMMs on those cache-resident blocks, done by the BLAS that torch links (MKL on x86: near the FMA
// peak at these sizes); the softmax and the edit run between them while the block is in cache.
#include <algorithm>
#include <limits>
#include <vector>

#include <omp.h>

#include "../cpu_isa.h"
#include "attention.h"

// Fortran BLAS, as exported by libtorch_cpu (torch's own CPUBlas.cpp declares them the same way). Weak:
// a torch built without a BLAS leaves them null and the plain loops below take over.
extern "C" {
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha, const float* a,
            const int* lda, const float* b, const int* ldb, const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const double* alpha, const double* a,
            const int* lda, const double* b, const int* ldb, const double* beta, double* c, const int* ldc) __attribute__((weak));
}

namespace gk::attn {

bool cpu_blas_available() { return sgemm_ != nullptr && dgemm_ != nullptr; }

namespace {

bool g_use_blas = cpu_blas_available();  // tests turn it off to check the plain loops as well

// Column-major BLAS call (row-major callers swap the operands; see the two products below).
inline void blas_gemm(char ta, char tb, int m, int n, int k, float alpha, const float* a, int lda, const float* b, int ldb,
                      float* c, int ldc) {
    const float beta = 0.f;
    sgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}
inline void blas_gemm(char ta, char tb, int m, int n, int k, double alpha, const double* a, int lda, const double* b,
                      int ldb, double* c, int ldc) {
    const double beta = 0.;
    dgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

// S[nr, K] (row stride ldS) = scale * q[nr, D] k[K, D]^T, all row-major.
template <typename T> void scores_block(const T* q, int nr, int D, const T* k, int K, T scale, T* S, int ldS) {
    if (g_use_blas) {  // column-major: S^T [K, nr] = scale * k [D, K]^T q [D, nr]
        blas_gemm('T', 'N', K, nr, D, scale, k, D, q, D, S, ldS);
        return;
    }
    for (int i = 0; i < nr; ++i)
        for (int n = 0; n < K; ++n) {
            T s = 0;
#pragma omp simd reduction(+ : s)
            for (int d = 0; d < D; ++d) s += q[(int64_t)i * D + d] * k[(int64_t)n * D + d];
            S[(int64_t)i * ldS + n] = scale * s;
        }
}

// O[nr, Dv] (row stride Dv) = P[nr, K] (row stride ldP) v[K, Dv].
template <typename T> void pv_block(const T* P, int nr, int ldP, int K, const T* v, int Dv, T* O) {
    if (g_use_blas) {  // column-major: O^T [Dv, nr] = v [Dv, K] P^T [K, nr]
        blas_gemm('N', 'N', Dv, nr, K, T(1), v, Dv, P, ldP, O, Dv);
        return;
    }
    for (int i = 0; i < nr; ++i) {
        T* o = O + (int64_t)i * Dv;
        std::fill(o, o + Dv, T(0));
        for (int n = 0; n < K; ++n) {
            const T p = P[(int64_t)i * ldP + n];
            const T* vr = v + (int64_t)n * Dv;
#pragma omp simd
            for (int d = 0; d < Dv; ++d) o[d] += p * vr[d];
        }
    }
}

// float32: the vector softmax of attention_rows_cpu.cpp, in the instruction set csrc/cpu_isa.h chose.
void softmax_rows(float* S, int nrows, int K, int ld) {
    cpu::dispatch([&](auto kern) { kern.softmax_rows(S, nrows, K, ld); });
}

// float64 (tests and references): plain loops.
void softmax_rows(double* S, int nrows, int K, int ld) {
    for (int r = 0; r < nrows; ++r) {
        double* s = S + (int64_t)r * ld;
        const double m = *std::max_element(s, s + K);
        double sum = 0;
        for (int n = 0; n < K; ++n) sum += (s[n] = softmax_num(s[n], m));
        for (int n = 0; n < K; ++n) s[n] /= sum;
    }
}

// The cross edit of one slot with its sparse W_t as E layers of one (row, weight) per column (ELLPACK;
// columns with fewer entries padded with weight 0): a row's edit is then E gathers over whole rows.
template <typename T> struct EllSlot {
    int E = 0;
    std::vector<int32_t> rows;  // [E, K]
    std::vector<T> vals;        // [E, K]
    const T* c = nullptr;       // [K]
};

template <typename T> EllSlot<T> ell_slot(const EditCols<T>& e, int t) {
    EllSlot<T> s;
    const int K = e.K;
    const int32_t* cp = e.col_ptr + (int64_t)t * (K + 1);
    for (int n = 0; n < K; ++n) s.E = std::max(s.E, int(cp[n + 1] - cp[n]));
    s.rows.assign((size_t)s.E * K, 0);
    s.vals.assign((size_t)s.E * K, T(0));
    for (int n = 0; n < K; ++n)
        for (int32_t j = cp[n]; j < cp[n + 1]; ++j) {
            s.rows[(size_t)(j - cp[n]) * K + n] = e.rows[j];
            s.vals[(size_t)(j - cp[n]) * K + n] = e.vals[j];
        }
    s.c = e.c + (int64_t)t * K;
    return s;
}

}  // namespace

void set_cpu_blas(bool on) { g_use_blas = on && cpu_blas_available(); }

template <typename T> void attention_fwd_cpu(const AttnArgs<T>& a) {
    const int B = a.route.B, H = a.H, Q = a.Q, K = a.K, D = a.D, Dv = a.Dv;
    const Routing& rt = a.route;
    const bool has_edit = a.edit.col_ptr != nullptr;
    const int ldS = (K + 15) / 16 * 16;  // whole vectors per row (the softmax's), rows on 64-byte boundaries

    // Elements whose maps others read keep their rows of the current block in a buffer of their own.
    std::vector<int> src_buf(B, -1);
    int n_src = 0;
    for (int b = 0; b < B; ++b)
        if (rt.src[b] >= 0 && src_buf[rt.src[b]] < 0) src_buf[rt.src[b]] = n_src++;
    std::vector<int> order;  // sources (and unedited elements) first, then the elements that read them
    for (int b = 0; b < B; ++b)
        if (rt.src[b] < 0) order.push_back(b);
    for (int b = 0; b < B; ++b)
        if (rt.src[b] >= 0) order.push_back(b);
    std::vector<EllSlot<T>> ell(B);  // per element with a cross edit
    for (int b = 0; b < B; ++b)
        if (rt.slot[b] >= 0 && has_edit) ell[b] = ell_slot(a.edit, rt.slot[b]);
    std::vector<char> needs_own(B);
    for (int b = 0; b < B; ++b)
        needs_own[b] = rt.src[b] < 0 || (rt.slot[b] >= 0 && has_edit && slot_needs_own(a.edit, rt.slot[b]));

    // A cross edit that never reads the element's own map (c_t = 0: a word swap inside its window) and
    // that nobody stores moves to the values: P_t V = base (W_t V), one P.V product with no per-query edit
    // (W_t V costs K x Dv per head). Edits that read the own map are applied to the rows (cheaper than a
    // second P.V product).
    std::vector<int> vedit(B, -1);
    int n_vedit = 0;
    for (int b = 0; b < B; ++b)
        if (rt.slot[b] >= 0 && !needs_own[b] && !(a.store && rt.store_idx[b] >= 0)) vedit[b] = n_vedit++;
    std::vector<T> vw((size_t)n_vedit * H * K * Dv);
    if (n_vedit) {
#pragma omp parallel for schedule(dynamic, 1)
        for (int64_t it = 0; it < (int64_t)B * H; ++it) {
            const int b = int(it / H), h = int(it % H);
            if (vedit[b] < 0) continue;
            const int t = rt.slot[b];
            const T* vb = a.v + it * K * Dv;
            T* w = vw.data() + ((size_t)vedit[b] * H + h) * K * Dv;
            const int32_t* cp = a.edit.col_ptr + (int64_t)t * (K + 1);
            for (int n = 0; n < K; ++n) {  // column n of W_t spreads row n of V over the rows it reads
                const T* vr = vb + (int64_t)n * Dv;
                for (int32_t j = cp[n]; j < cp[n + 1]; ++j) {
                    T* wr = w + (int64_t)a.edit.rows[j] * Dv;
                    const T wv = a.edit.vals[j];
#pragma omp simd
                    for (int d = 0; d < Dv; ++d) wr[d] += wv * vr[d];
                }
            }
        }
    }

    // Query block: the map buffers ((n_src + 2) x [QB, ldS]) stay within ~1 MiB (L2), and a block is big
    // enough for the GEMMs to run at full rate. A thread takes a (block, head) pair, or a block with all
    // its heads when maps are stored (the store sums over heads: one writer per row, no atomics), and
    // then the blocks are made small enough for every thread to get several.
    const int heads_per_unit = a.store ? H : 1;
    const int64_t min_blocks = a.store ? 4 * int64_t(omp_get_max_threads()) : 1;
    const int64_t budget = (1024 * 1024) / (int64_t(sizeof(T)) * ldS * (n_src + 2));
    const int QB = int(std::clamp<int64_t>(std::min(budget, (Q + min_blocks - 1) / min_blocks), 64, 512));
    const int n_blocks = (Q + QB - 1) / QB, units_per_block = H / heads_per_unit;

#pragma omp parallel
    {
        const int rows = std::min(QB, Q);
        std::vector<T> srcrows((size_t)std::max(n_src, 1) * rows * ldS), own((size_t)rows * ldS), edited((size_t)rows * ldS);
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < (int64_t)n_blocks * units_per_block; ++it) {
            const int blk = int(it / units_per_block), h0 = int(it % units_per_block) * heads_per_unit;
            const int q0 = blk * QB, nr = std::min(QB, Q - q0);
            for (int h = h0; h < h0 + heads_per_unit; ++h) {
                for (int b : order) {
                    const int64_t bh = (int64_t)b * H + h;
                    T* ownp = src_buf[b] >= 0 ? srcrows.data() + (size_t)src_buf[b] * rows * ldS : own.data();
                    if (needs_own[b]) {
                        scores_block(a.q + (bh * Q + q0) * D, nr, D, a.k + bh * K * D, K, a.scale, ownp, ldS);
                        softmax_rows(ownp, nr, K, ldS);
                    }
                    T* o = a.out + (bh * Q + q0) * Dv;
                    const T* base = rt.src[b] >= 0 ? srcrows.data() + (size_t)src_buf[rt.src[b]] * rows * ldS : nullptr;
                    if (vedit[b] >= 0) {  // cross edit through the values (see above)
                        pv_block(base, nr, ldS, K, vw.data() + ((size_t)vedit[b] * H + h) * K * Dv, Dv, o);
                        continue;
                    }
                    const T* P = ownp;
                    if (base) {
                        const int t = rt.slot[b];
                        if (t < 0) {
                            P = base;  // map injection
                        } else {
                            const EllSlot<T>& e = ell[b];
                            cpu::dispatch([&](auto kern) {
                                kern.template edit_rows<T>(nr, ldS, K, e.E, e.rows.data(), e.vals.data(), e.c,
                                                           needs_own[b] ? ownp : nullptr, base, edited.data());
                            });
                            P = edited.data();
                        }
                    }
                    pv_block(P, nr, ldS, K, a.v + bh * K * Dv, Dv, o);
                    if (a.store && rt.store_idx[b] >= 0) {
                        T* st = a.store + ((int64_t)rt.store_idx[b] * Q + q0) * K;
                        for (int r = 0; r < nr; ++r)
#pragma omp simd
                            for (int n = 0; n < K; ++n) st[(int64_t)r * K + n] += P[(int64_t)r * ldS + n];
                    }
                }
            }
        }
    }
}

template void attention_fwd_cpu<float>(const AttnArgs<float>&);
template void attention_fwd_cpu<double>(const AttnArgs<double>&);

}  // namespace gk::attn
