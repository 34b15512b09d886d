// CPU schedule of the fused attention-map control kernel (math: attention_math.h). OpenMP over query
// blocks; inside a block, every head and batch element, sources first, so that the elements that take
// a source's map find its rows at hand. Only blocks of rows ever exist ([QB, Kp] per source plus two
// scratch blocks per thread), never a [Q, K] map; scores are skipped for elements that never read their
// own map (map injection, full word swap). Scores and P.V run on register tiles (4 rows x up to 5 64-byte
// vectors, GCC vector extensions: AVX-512, AVX2 or SSE, whatever the build targets).
#include <algorithm>
#include <cstring>
#include <vector>

#include "attention.h"

namespace gk::attn {
namespace {

template <typename T, int BYTES = 64> struct Vec {
    static constexpr int N = BYTES / sizeof(T);
    typedef T type __attribute__((vector_size(BYTES), aligned(sizeof(T))));  // unaligned loads/stores allowed
};
constexpr int MR = 4;  // query rows per register tile
// Rows are padded to kCpuPad: whole 64-byte vectors, then at most one 32-byte vector (float).
static_assert(kCpuPad % Vec<float, 32>::N == 0 && kCpuPad % Vec<double, 32>::N == 0, "padding must be whole vectors");

// Register tiles: R rows x C vectors of accumulators. Per step of the inner dimension, C vector loads and
// R broadcasts feed R*C FMAs (4 x 5: 20 FMAs for 9 loads).
//
// S[i, n0:n0+C*N] = scale * q[i, :] . kt[:, n0:n0+C*N] for R rows (kt: keys transposed, [D, Kp]).
template <typename T, int R, int C, int BYTES>
inline void scores_tile(const T* __restrict q, int D, const T* __restrict kt, int Kp, T scale, T* __restrict S, int ldS,
                        int n0) {
    using V = typename Vec<T, BYTES>::type;
    constexpr int N = Vec<T, BYTES>::N;
    V acc[R][C];
#pragma GCC unroll 5
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 5
        for (int c = 0; c < C; ++c) acc[i][c] = V{};
    for (int d = 0; d < D; ++d) {
        V kv[C];
#pragma GCC unroll 5
        for (int c = 0; c < C; ++c) kv[c] = *reinterpret_cast<const V*>(kt + (int64_t)d * Kp + n0 + c * N);
#pragma GCC unroll 5
        for (int i = 0; i < R; ++i) {
            const T qv = q[(int64_t)i * D + d];
#pragma GCC unroll 5
            for (int c = 0; c < C; ++c) acc[i][c] += qv * kv[c];
        }
    }
#pragma GCC unroll 5
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 5
        for (int c = 0; c < C; ++c) *reinterpret_cast<V*>(S + (int64_t)i * ldS + n0 + c * N) = acc[i][c] * scale;
}

// O[i, d0:d0+C*N] (+)= P[i, 0:K] vp[0:K, d0:d0+C*N] for R rows.
template <typename T, int R, int C, int BYTES, bool ACC>
inline void pv_tile(const T* __restrict P, int ldP, int K, const T* __restrict vp, int Dvp, T* __restrict O, int d0) {
    using V = typename Vec<T, BYTES>::type;
    constexpr int N = Vec<T, BYTES>::N;
    V acc[R][C];
#pragma GCC unroll 5
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 5
        for (int c = 0; c < C; ++c) acc[i][c] = ACC ? *reinterpret_cast<const V*>(O + (int64_t)i * Dvp + d0 + c * N) : V{};
    for (int n = 0; n < K; ++n) {
        V vv[C];
#pragma GCC unroll 5
        for (int c = 0; c < C; ++c) vv[c] = *reinterpret_cast<const V*>(vp + (int64_t)n * Dvp + d0 + c * N);
#pragma GCC unroll 5
        for (int i = 0; i < R; ++i) {
            const T p = P[(int64_t)i * ldP + n];
#pragma GCC unroll 5
            for (int c = 0; c < C; ++c) acc[i][c] += p * vv[c];
        }
    }
#pragma GCC unroll 5
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 5
        for (int c = 0; c < C; ++c) *reinterpret_cast<V*>(O + (int64_t)i * Dvp + d0 + c * N) = acc[i][c];
}

// Walks a padded row width W in tiles of 5 vectors (20 accumulators of the 32 AVX-512 registers; 80 =
// SD's 77 text tokens padded, and head dim 80), then 4/3/2/1 full vectors, then one 32-byte vector.
template <typename T, typename F5, typename F4, typename F3, typename F2, typename F1, typename FH>
inline void walk_columns(int W, F5 f5, F4 f4, F3 f3, F2 f2, F1 f1, FH fh) {
    constexpr int N = Vec<T>::N;
    int x = 0;
    for (; x + 5 * N <= W; x += 5 * N) f5(x);
    const int rest = (W - x) / N;
    if (rest == 4) f4(x);
    else if (rest == 3) f3(x);
    else if (rest == 2) f2(x);
    else if (rest == 1) f1(x);
    x += rest * N;
    if (x < W) fh(x);  // W is a multiple of kCpuPad: at most one 32-byte vector is left
}

// Row-wise softmax over the first K of Kp entries, in place; the padding becomes 0.
template <typename T> void softmax_rows(T* S, int nrows, int K, int Kp) {
    for (int r = 0; r < nrows; ++r) {
        T* __restrict s = S + (int64_t)r * Kp;
        T m = s[0];
#pragma omp simd reduction(max : m)
        for (int n = 0; n < K; ++n) m = s[n] > m ? s[n] : m;
        T sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int n = 0; n < K; ++n) {
            const T e = softmax_num(s[n], m);
            s[n] = e;
            sum += e;
        }
        const T inv = T(1) / sum;
#pragma omp simd
        for (int n = 0; n < K; ++n) s[n] *= inv;
        for (int n = K; n < Kp; ++n) s[n] = T(0);
    }
}

template <typename T, int R>
inline void scores_rows(const T* q, int D, const T* kt, int Kp, T scale, T* S) {
    walk_columns<T>(
        Kp, [&](int x) { scores_tile<T, R, 5, 64>(q, D, kt, Kp, scale, S, Kp, x); },
        [&](int x) { scores_tile<T, R, 4, 64>(q, D, kt, Kp, scale, S, Kp, x); },
        [&](int x) { scores_tile<T, R, 3, 64>(q, D, kt, Kp, scale, S, Kp, x); },
        [&](int x) { scores_tile<T, R, 2, 64>(q, D, kt, Kp, scale, S, Kp, x); },
        [&](int x) { scores_tile<T, R, 1, 64>(q, D, kt, Kp, scale, S, Kp, x); },
        [&](int x) { scores_tile<T, R, 1, 32>(q, D, kt, Kp, scale, S, Kp, x); });
}

template <typename T, int R, bool ACC>
inline void pv_rows(const T* P, int Kp, int K, const T* vp, int Dvp, T* O) {
    walk_columns<T>(
        Dvp, [&](int x) { pv_tile<T, R, 5, 64, ACC>(P, Kp, K, vp, Dvp, O, x); },
        [&](int x) { pv_tile<T, R, 4, 64, ACC>(P, Kp, K, vp, Dvp, O, x); },
        [&](int x) { pv_tile<T, R, 3, 64, ACC>(P, Kp, K, vp, Dvp, O, x); },
        [&](int x) { pv_tile<T, R, 2, 64, ACC>(P, Kp, K, vp, Dvp, O, x); },
        [&](int x) { pv_tile<T, R, 1, 64, ACC>(P, Kp, K, vp, Dvp, O, x); },
        [&](int x) { pv_tile<T, R, 1, 32, ACC>(P, Kp, K, vp, Dvp, O, x); });
}

template <typename T>
void scores_block(const T* q, int nrows, int D, const T* kt, int Kp, T scale, T* S) {
    int r = 0;
    for (; r + MR <= nrows; r += MR) scores_rows<T, MR>(q + (int64_t)r * D, D, kt, Kp, scale, S + (int64_t)r * Kp);
    for (; r < nrows; ++r) scores_rows<T, 1>(q + (int64_t)r * D, D, kt, Kp, scale, S + (int64_t)r * Kp);
}

template <typename T, bool ACC = false>
void pv_block(const T* P, int nrows, int Kp, int K, const T* vp, int Dvp, T* O) {
    int r = 0;
    for (; r + MR <= nrows; r += MR) pv_rows<T, MR, ACC>(P + (int64_t)r * Kp, Kp, K, vp, Dvp, O + (int64_t)r * Dvp);
    for (; r < nrows; ++r) pv_rows<T, 1, ACC>(P + (int64_t)r * Kp, Kp, K, vp, Dvp, O + (int64_t)r * Dvp);
}

}  // namespace

template <typename T> void attention_fwd_cpu(const AttnArgs<T>& a) {
    const int B = a.route.B, H = a.H, Q = a.Q, K = a.K, D = a.D, Dv = a.Dv, Kp = a.Kp, Dvp = a.Dvp;
    const Routing& rt = a.route;
    const bool has_edit = a.edit.col_ptr != nullptr;

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
    std::vector<T> vw((size_t)n_vedit * H * K * Dvp);
    if (n_vedit) {
#pragma omp parallel for schedule(dynamic, 1)
        for (int64_t it = 0; it < (int64_t)B * H; ++it) {
            const int b = int(it / H), h = int(it % H);
            if (vedit[b] < 0) continue;
            const int t = rt.slot[b];
            const T* vb = a.v + it * K * Dvp;
            T* w = vw.data() + ((size_t)vedit[b] * H + h) * K * Dvp;
            const int32_t* cp = a.edit.col_ptr + (int64_t)t * (K + 1);
            for (int n = 0; n < K; ++n) {  // column n of W_t spreads row n of V over the rows it reads
                const T* vr = vb + (int64_t)n * Dvp;
                for (int32_t j = cp[n]; j < cp[n + 1]; ++j) {
                    T* wr = w + (int64_t)a.edit.rows[j] * Dvp;
                    const T wv = a.edit.vals[j];
#pragma omp simd
                    for (int d = 0; d < Dvp; ++d) wr[d] += wv * vr[d];
                }
            }
        }
    }

    // Query block: the row buffers ((n_src + 2) x [QB, Kp]) stay within ~512 KiB (L2).
    const int64_t budget = (512 * 1024) / (int64_t(sizeof(T)) * Kp * (n_src + 2));
    int QB = int(std::clamp<int64_t>(budget / MR * MR, MR, 64));
    QB = std::min(QB, ((Q + MR - 1) / MR) * MR);
    const int n_blocks = (Q + QB - 1) / QB;

#pragma omp parallel
    {
        std::vector<T> srcrows((size_t)std::max(n_src, 1) * QB * Kp), own((size_t)QB * Kp), edited((size_t)QB * Kp);
        std::vector<T> ob((size_t)QB * Dvp);
#pragma omp for schedule(dynamic, 1)
        for (int blk = 0; blk < n_blocks; ++blk) {
            const int q0 = blk * QB, nr = std::min(QB, Q - q0);
            for (int h = 0; h < H; ++h) {
                for (int b : order) {
                    const int64_t bh = (int64_t)b * H + h;
                    T* ownp = src_buf[b] >= 0 ? srcrows.data() + (size_t)src_buf[b] * QB * Kp : own.data();
                    if (needs_own[b]) {
                        scores_block(a.q + (bh * Q + q0) * D, nr, D, a.k + bh * D * Kp, Kp, a.scale, ownp);
                        softmax_rows(ownp, nr, K, Kp);
                    }
                    const T* P = ownp;
                    T* o = a.out + (bh * Q + q0) * Dv;
                    if (vedit[b] >= 0) {  // cross edit through the values (see above)
                        const size_t off = ((size_t)vedit[b] * H + h) * K * Dvp;
                        const T* base = srcrows.data() + (size_t)src_buf[rt.src[b]] * QB * Kp;
                        pv_block(base, nr, Kp, K, vw.data() + off, Dvp, ob.data());
                        for (int r = 0; r < nr; ++r) std::memcpy(o + (int64_t)r * Dv, ob.data() + (int64_t)r * Dvp, sizeof(T) * Dv);
                        continue;
                    }
                    if (rt.src[b] >= 0) {
                        const T* base = srcrows.data() + (size_t)src_buf[rt.src[b]] * QB * Kp;
                        const int t = rt.slot[b];
                        if (t < 0) {
                            P = base;  // map injection
                        } else {
                            for (int r = 0; r < nr; ++r) {
                                T* er = edited.data() + (int64_t)r * Kp;
                                edited_row(a.edit, t, needs_own[b] ? ownp + (int64_t)r * Kp : nullptr, base + (int64_t)r * Kp, er);
                                for (int n = K; n < Kp; ++n) er[n] = T(0);
                            }
                            P = edited.data();
                        }
                    }
                    pv_block(P, nr, Kp, K, a.v + bh * K * Dvp, Dvp, ob.data());
                    for (int r = 0; r < nr; ++r) std::memcpy(o + (int64_t)r * Dv, ob.data() + (int64_t)r * Dvp, sizeof(T) * Dv);
                    if (a.store && rt.store_idx[b] >= 0) {
                        T* st = a.store + ((int64_t)rt.store_idx[b] * Q + q0) * K;
                        for (int r = 0; r < nr; ++r)
#pragma omp simd
                            for (int n = 0; n < K; ++n) st[(int64_t)r * K + n] += P[(int64_t)r * Kp + n];
                    }
                }
            }
        }
    }
}

template void attention_fwd_cpu<float>(const AttnArgs<float>&);
template void attention_fwd_cpu<double>(const AttnArgs<double>&);

}  // namespace gk::attn
