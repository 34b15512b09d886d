// Spherical-harmonics colours on CUDA: one thread per (camera, Gaussian). Math: gk_sh.h.
#include "cuda_common.cuh"
#include "gk_sh.h"
#include "kernels.h"

namespace gk {

template <typename T>
__global__ void sh_fwd_kernel(int degree, int64_t M, int K, const T* dirs, const T* coeffs, int64_t period, T* colors) {
    const int64_t m = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (m >= M) return;
    Vec3<T> d = {dirs[m * 3], dirs[m * 3 + 1], dirs[m * 3 + 2]};
    sh_eval<T>(degree, d, coeffs + (m % period) * K * 3, 3, colors + m * 3);
}

template <typename T>
__global__ void sh_bwd_kernel(int degree, int64_t M, int K, const T* dirs, const T* coeffs, int64_t period,
                              const T* v_colors, T* v_coeffs, T* v_dirs) {
    const int64_t m = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (m >= M) return;
    const int64_t n = m % period;
    Vec3<T> d = {dirs[m * 3], dirs[m * 3 + 1], dirs[m * 3 + 2]};
    T local[48] = {};
    Vec3<T> vd = sh_eval_vjp<T>(degree, d, coeffs + n * K * 3, 3, v_colors + m * 3, local);
    const int used = (degree + 1) * (degree + 1) * 3;
    if (period == M) {
        for (int k = 0; k < used; ++k) v_coeffs[n * K * 3 + k] += local[k];
    } else {  // other cameras share these coefficients
        for (int k = 0; k < used; ++k) atomicAdd(v_coeffs + n * K * 3 + k, local[k]);
    }
    v_dirs[m * 3] = vd.x;
    v_dirs[m * 3 + 1] = vd.y;
    v_dirs[m * 3 + 2] = vd.z;
}

template <typename T>
void sh_fwd_cuda(int degree, int64_t M, int K, const T* dirs, const T* coeffs, int64_t period, T* colors, void* stream) {
    launch(sh_fwd_kernel<T>, blocks_for(M), kThreads, 0, stream, degree, M, K, dirs, coeffs, period, colors);
}

template <typename T>
void sh_bwd_cuda(int degree, int64_t M, int K, const T* dirs, const T* coeffs, int64_t period, const T* v_colors,
                 T* v_coeffs, T* v_dirs, void* stream) {
    launch(sh_bwd_kernel<T>, blocks_for(M), kThreads, 0, stream, degree, M, K, dirs, coeffs, period, v_colors, v_coeffs,
           v_dirs);
}

template void sh_fwd_cuda<float>(int, int64_t, int, const float*, const float*, int64_t, float*, void*);
template void sh_fwd_cuda<double>(int, int64_t, int, const double*, const double*, int64_t, double*, void*);
template void sh_bwd_cuda<float>(int, int64_t, int, const float*, const float*, int64_t, const float*, float*, float*, void*);
template void sh_bwd_cuda<double>(int, int64_t, int, const double*, const double*, int64_t, const double*, double*, double*,
                                  void*);

}  // namespace gk
