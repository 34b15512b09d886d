// Spherical-harmonics colours on the CPU: OpenMP over (camera, Gaussian) pairs. Math: gk_sh.h.
// coeffs row m is coeffs[(m % coeff_period) * K * 3 ...]: one set per Gaussian shared by all cameras.
#include <vector>

#include "gk_sh.h"
#include "kernels.h"

namespace gk {

template <typename T>
void sh_fwd_cpu(int degree, int64_t M, int K, const T* dirs, const T* coeffs, int64_t coeff_period, T* colors) {
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
        Vec3<T> d = {dirs[m * 3], dirs[m * 3 + 1], dirs[m * 3 + 2]};
        sh_eval<T>(degree, d, coeffs + (m % coeff_period) * K * 3, 3, colors + m * 3);
    }
}

template <typename T>
void sh_bwd_cpu(int degree, int64_t M, int K, const T* dirs, const T* coeffs, int64_t coeff_period, const T* v_colors,
                T* v_coeffs, T* v_dirs) {
    // Rows that share coefficients (same Gaussian, other cameras) are summed by one thread each.
    int64_t reps = (M + coeff_period - 1) / coeff_period;
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < coeff_period; ++n) {
        for (int64_t r = 0; r < reps; ++r) {
            int64_t m = r * coeff_period + n;
            if (m >= M) break;
            Vec3<T> d = {dirs[m * 3], dirs[m * 3 + 1], dirs[m * 3 + 2]};
            Vec3<T> vd = sh_eval_vjp<T>(degree, d, coeffs + n * K * 3, 3, v_colors + m * 3, v_coeffs + n * K * 3);
            v_dirs[m * 3] = vd.x;
            v_dirs[m * 3 + 1] = vd.y;
            v_dirs[m * 3 + 2] = vd.z;
        }
    }
}

template void sh_fwd_cpu<float>(int, int64_t, int, const float*, const float*, int64_t, float*);
template void sh_fwd_cpu<double>(int, int64_t, int, const double*, const double*, int64_t, double*);
template void sh_bwd_cpu<float>(int, int64_t, int, const float*, const float*, int64_t, const float*, float*, float*);
template void sh_bwd_cpu<double>(int, int64_t, int, const double*, const double*, int64_t, const double*, double*, double*);

}  // namespace gk
