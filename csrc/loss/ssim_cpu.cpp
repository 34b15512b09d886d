// SSIM (Wang et al. 2004) on the CPU, forward and backward, as 3DGS trains with it: a separable
// Gaussian window over zero-padded ("same") images. gsplat_kit/train/losses.py holds the torch version
// (the reference, and the GPU path); on the CPU its ~40 small tensor ops per call cost more than the
// rasteriser itself, which is why this kernel exists (figures: `python scripts/bench_loss.py`, BENCHMARKS.md).
//
// With the five local moments mu1 = w*x, mu2 = w*y, e11 = w*x^2, e22 = w*y^2, e12 = w*xy (w: the window),
// s11 = e11 - mu1^2, s22 = e22 - mu2^2, s12 = e12 - mu1 mu2 and
//     A = 2 mu1 mu2 + C1, B = 2 s12 + C2, C = mu1^2 + mu2^2 + C1, D = s11 + s22 + C2,   S = A B / (C D).
// The backward to x: each moment is a window sum, and the window is symmetric, so with G = dL/dS
//     dL/dx = w*(G dS/dmu1) + 2 x w*(G dS/de11) + y w*(G dS/de12),
//     dS/dmu1 = 2 mu2 (B - A) / (C D) - 2 mu1 S (1/C - 1/D),  dS/de11 = -S / D,  dS/de12 = 2 A / (C D).
//
// Compiled once per instruction set (csrc/cpu_isa.h): everything here is in gk::isa_<set>; the op that
// checks the tensors and calls it is ssim_ops.cpp.
#include <algorithm>
#include <vector>

#include "../cpu_isa.h"

#ifndef GK_CPU_ISA
#error "compiled once per instruction set by setup.py, with -DGK_CPU_ISA=<set> (csrc/cpu_isa.h)"
#endif

namespace gk::GK_CPU_ISA_NS {
namespace {

// out = w * in on one H x W plane (zero padding, "same" size); tmp: H x W scratch. The tap loops are
// outside, so the inner loops run along rows and vectorise.
template <typename T>
void blur_plane(const T* __restrict in, T* __restrict tmp, T* __restrict out, int H, int W, const T* g, int k) {
    const int r = k / 2;
    for (int y = 0; y < H; ++y) {  // along x
        const T* src = in + (int64_t)y * W;
        T* dst = tmp + (int64_t)y * W;
        std::fill(dst, dst + W, T(0));
        for (int i = 0; i < k; ++i) {
            const int off = i - r, x0 = std::max(0, -off), x1 = std::min(W, W - off);
            const T gi = g[i];
#pragma omp simd
            for (int x = x0; x < x1; ++x) dst[x] += gi * src[x + off];
        }
    }
    for (int y = 0; y < H; ++y) {  // along y
        T* dst = out + (int64_t)y * W;
        std::fill(dst, dst + W, T(0));
        for (int i = std::max(0, r - y); i < std::min(k, H + r - y); ++i) {
            const T* src = tmp + (int64_t)(y + i - r) * W;
            const T gi = g[i];
#pragma omp simd
            for (int x = 0; x < W; ++x) dst[x] += gi * src[x];
        }
    }
}

constexpr double kC1 = 0.01 * 0.01, kC2 = 0.03 * 0.03;

// A, B, C, D of the header comment at element i of the moments ([5][N]: mu1, mu2, e11, e22, e12).
template <typename T> struct SsimTerms {
    T mu1, mu2, A, B, C, D;
};
template <typename T> inline SsimTerms<T> ssim_terms(const T* m, int64_t N, int64_t i) {
    const T mu1 = m[i], mu2 = m[N + i];
    const T s11 = m[2 * N + i] - mu1 * mu1, s22 = m[3 * N + i] - mu2 * mu2, s12 = m[4 * N + i] - mu1 * mu2;
    return {mu1, mu2, 2 * mu1 * mu2 + T(kC1), 2 * s12 + T(kC2), mu1 * mu1 + mu2 * mu2 + T(kC1), s11 + s22 + T(kC2)};
}

// The five moments of every plane (moments: [5][planes][P]) and the SSIM map.
}  // namespace

template <typename T>
void Kernels::ssim_forward(const T* xs, const T* ys, const T* g, int k, int64_t planes, int H, int W, T* m, T* smap) {
    const int64_t P = int64_t(H) * W, N = planes * P;
#pragma omp parallel
    {
        std::vector<T> prod(P), tmp(P);
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < planes * 5; ++it) {
            const int64_t p = it / 5;
            const int which = int(it % 5);  // mu1, mu2, e11, e22, e12
            const T* a = xs + p * P;
            const T* b = ys + p * P;
            const T* src = which == 0 ? a : which == 1 ? b : prod.data();
            if (which >= 2) {
                const T* u = which == 3 ? b : a;
                const T* v = which == 2 ? a : b;
#pragma omp simd
                for (int64_t i = 0; i < P; ++i) prod[i] = u[i] * v[i];
            }
            blur_plane(src, tmp.data(), m + which * N + p * P, H, W, g, k);
        }
#pragma omp for schedule(static)
        for (int64_t i = 0; i < N; ++i) {
            const SsimTerms<T> s = ssim_terms(m, N, i);
            smap[i] = (s.A * s.B) / (s.C * s.D);
        }
    }
}

// dL/dx from the moments and dL/dS = G; t: [3][planes][P] scratch.
template <typename T>
void Kernels::ssim_backward(const T* xs, const T* ys, const T* g, int k, int64_t planes, int H, int W, const T* m,
                            const T* G, T* t, T* dx) {
    const int64_t P = int64_t(H) * W, N = planes * P;
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int64_t i = 0; i < N; ++i) {  // G dS/dmu1, G dS/de11, G dS/de12
            const SsimTerms<T> s = ssim_terms(m, N, i);
            const T CD = s.C * s.D, S = s.A * s.B / CD;
            t[i] = G[i] * (2 * s.mu2 * (s.B - s.A) / CD - 2 * s.mu1 * S * (T(1) / s.C - T(1) / s.D));
            t[N + i] = G[i] * (-S / s.D);
            t[2 * N + i] = G[i] * (2 * s.A / CD);
        }
        std::vector<T> tmp(P), blurred(P);
#pragma omp for schedule(dynamic, 1)
        for (int64_t p = 0; p < planes; ++p) {
            T* out = dx + p * P;
            const T* a = xs + p * P;
            const T* b = ys + p * P;
            blur_plane(t + p * P, tmp.data(), out, H, W, g, k);
            blur_plane(t + N + p * P, tmp.data(), blurred.data(), H, W, g, k);
#pragma omp simd
            for (int64_t i = 0; i < P; ++i) out[i] += 2 * a[i] * blurred[i];
            blur_plane(t + 2 * N + p * P, tmp.data(), blurred.data(), H, W, g, k);
#pragma omp simd
            for (int64_t i = 0; i < P; ++i) out[i] += b[i] * blurred[i];
        }
    }
}


#define GK_SSIM_INSTANTIATE(T)                                                                                      \
    template void Kernels::ssim_forward<T>(const T*, const T*, const T*, int, int64_t, int, int, T*, T*);          \
    template void Kernels::ssim_backward<T>(const T*, const T*, const T*, int, int64_t, int, int, const T*, const T*, \
                                            T*, T*);
GK_SSIM_INSTANTIATE(float)
GK_SSIM_INSTANTIATE(double)
#undef GK_SSIM_INSTANTIATE

}  // namespace gk::GK_CPU_ISA_NS
