// The attention kernel's loops over rows of a block of maps on the CPU, which attention_cpu.cpp calls
// between its two products: the row softmax, in explicit float vectors (gk_common.h, simd), and the
// cross edit. Compiled once per instruction set (csrc/cpu_isa.h): everything here is in gk::isa_<set>.
#include <algorithm>
#include <limits>

#include "../cpu_isa.h"
#include "gk_common.h"

#ifndef GK_CPU_ISA
#error "compiled once per instruction set by setup.py, with -DGK_CPU_ISA=<set> (csrc/cpu_isa.h)"
#endif

namespace gk::GK_CPU_ISA_NS {
namespace {

using simd::VF;
using simd::VI;
constexpr int kVF = simd::kLanes;

// e^x for x <= 0 (a score minus its row maximum; gk_common.h's vector Cephes exp), exactly 0 below -75:
// those probabilities are < 3e-33 anyway, and a denormal product (probability / row sum) would cost a
// microcode assist per lane.
inline VF exp_nonpositive(VF x) { return x < -75.f ? VF{} : exp_poly(x); }

}  // namespace

// Row-wise softmax over the first K entries of rows of stride ld (>= K rounded up to kVF), in place.
// The last vector's lanes past K enter as -inf (exp 0), so that every pass runs on whole vectors.
void Kernels::softmax_rows(float* S, int nrows, int K, int ld) {
    const int nv = (K + kVF - 1) / kVF;
    VI lane;
    for (int l = 0; l < kVF; ++l) lane[l] = l;
    const VI in_row = lane < (K - (nv - 1) * kVF);
    const VF minus_inf = VF{} - std::numeric_limits<float>::infinity();
    for (int r = 0; r < nrows; ++r) {
        float* s = S + (int64_t)r * ld;
        float* tail = s + (nv - 1) * kVF;
        simd::store(tail, in_row ? simd::load(tail) : minus_inf);
        VF mv = simd::load(s);
        for (int c = 1; c < nv; ++c) {
            const VF x = simd::load(s + c * kVF);
            mv = x > mv ? x : mv;
        }
        float m = mv[0];
        for (int l = 1; l < kVF; ++l) m = mv[l] > m ? mv[l] : m;
        VF sv{};
        for (int c = 0; c < nv; ++c) {
            const VF e = exp_nonpositive(simd::load(s + c * kVF) - m);
            simd::store(s + c * kVF, e);
            sv += e;
        }
        const float inv = 1.f / simd::sum(sv);
        for (int c = 0; c < nv; ++c) simd::store(s + c * kVF, simd::load(s + c * kVF) * inv);
    }
}

// out[n] = own[n] c[n] + sum_w base[w] W[w, n] (attention_math.h) for nr rows of stride ld, W as E ELLPACK
// layers of (row, weight) per column ([E, K] each, attention_cpu.cpp); own null: the slot never reads it.
template <typename T>
void Kernels::edit_rows(int nr, int ld, int K, int E, const int32_t* rows, const T* vals, const T* c, const T* own,
                        const T* base, T* out_rows) {
    for (int r = 0; r < nr; ++r) {
        T* __restrict out = out_rows + (int64_t)r * ld;
        const T* __restrict b = base + (int64_t)r * ld;
        if (own) {
            const T* __restrict o = own + (int64_t)r * ld;
#pragma omp simd
            for (int n = 0; n < K; ++n) out[n] = o[n] * c[n];
        } else {
            std::fill(out, out + K, T(0));
        }
        for (int l = 0; l < E; ++l) {
            const int32_t* __restrict rw = rows + (size_t)l * K;
            const T* __restrict vl = vals + (size_t)l * K;
#pragma omp simd
            for (int n = 0; n < K; ++n) out[n] += b[rw[n]] * vl[n];
        }
    }
}

template void Kernels::edit_rows<float>(int, int, int, int, const int32_t*, const float*, const float*, const float*,
                                        const float*, float*);
template void Kernels::edit_rows<double>(int, int, int, int, const int32_t*, const double*, const double*, const double*,
                                         const double*, double*);

}  // namespace gk::GK_CPU_ISA_NS
