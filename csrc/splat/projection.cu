// Projection stage on CUDA: one thread per (camera, Gaussian). The math is gk_projection.h.
#include "cuda_common.cuh"
#include "gk_projection.h"
#include "kernels.h"

namespace gk {

template <typename T>
__global__ void projection_fwd_kernel(ProjectionArgs a, const T* means, const T* covars, const T* quats, const T* scales,
                                      const T* viewmats, const T* Ks, int32_t* radii, T* means2d, T* depths, T* conics,
                                      T* comps) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= int64_t(a.C) * a.N) return;
    const int64_t c = i / a.N, n = i % a.N;
    Mat3<T> cov = world_covariance(n, covars, quats, scales);
    Vec3<T> mean = {means[n * 3], means[n * 3 + 1], means[n * 3 + 2]};
    Mat3<T> R;
    Vec3<T> t;
    load_viewmat(viewmats + c * 16, R, t);
    Camera<T> cam = load_camera(Ks + c * 9, a.width, a.height);
    Projected<T> p = project_gaussian(mean, cov, R, t, cam, T(a.eps2d), T(a.near_plane), T(a.far_plane), T(a.radius_clip));
    store_projected(p, i, radii, means2d, depths, conics, comps);
}

template <typename T>
__global__ void projection_bwd_kernel(ProjectionArgs a, const T* means, const T* covars, const T* quats, const T* scales,
                                      const T* viewmats, const T* Ks, const int32_t* radii, const T* v_means2d,
                                      const T* v_depths, const T* v_conics, const T* v_comps, T* v_means, T* v_covars,
                                      T* v_quats, T* v_scales) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= int64_t(a.C) * a.N) return;
    if (radii[i * 2] <= 0 && radii[i * 2 + 1] <= 0) return;
    const int64_t c = i / a.N, n = i % a.N;
    Mat3<T> cov = world_covariance(n, covars, quats, scales);
    Vec3<T> mean = {means[n * 3], means[n * 3 + 1], means[n * 3 + 2]};
    Mat3<T> R;
    Vec3<T> t;
    load_viewmat(viewmats + c * 16, R, t);
    Camera<T> cam = load_camera(Ks + c * 9, a.width, a.height);
    Vec3<T> vm;
    Mat3<T> vcov;
    project_gaussian_vjp(mean, cov, R, t, cam, T(a.eps2d), v_means2d + i * 2, v_depths[i], v_conics + i * 3,
                         v_comps ? v_comps[i] : T(0), vm, vcov);
    // The VJP is linear in the upstream gradient, so per-camera terms can be summed atomically.
    atomicAdd(v_means + n * 3, vm.x);
    atomicAdd(v_means + n * 3 + 1, vm.y);
    atomicAdd(v_means + n * 3 + 2, vm.z);
    if (covars) {
        T vc[6];
        covar_from_upper_vjp(vcov, vc);
        for (int k = 0; k < 6; ++k) atomicAdd(v_covars + n * 6 + k, vc[k]);
    } else {
        T vq[4], vs[3];
        quat_scale_to_covar_vjp(quats + n * 4, scales + n * 3, vcov, vq, vs);
        for (int k = 0; k < 4; ++k) atomicAdd(v_quats + n * 4 + k, vq[k]);
        for (int k = 0; k < 3; ++k) atomicAdd(v_scales + n * 3 + k, vs[k]);
    }
}

template <typename T>
void projection_fwd_cuda(const ProjectionArgs& a, const T* means, const T* covars, const T* quats, const T* scales,
                         const T* viewmats, const T* Ks, int32_t* radii, T* means2d, T* depths, T* conics, T* comps,
                         void* stream) {
    const int64_t n = int64_t(a.C) * a.N;
    if (n == 0) return;
    projection_fwd_kernel<T><<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(a, means, covars, quats, scales, viewmats,
                                                                               Ks, radii, means2d, depths, conics, comps);
}

template <typename T>
void projection_bwd_cuda(const ProjectionArgs& a, const T* means, const T* covars, const T* quats, const T* scales,
                         const T* viewmats, const T* Ks, const int32_t* radii, const T* v_means2d, const T* v_depths,
                         const T* v_conics, const T* v_comps, T* v_means, T* v_covars, T* v_quats, T* v_scales,
                         void* stream) {
    const int64_t n = int64_t(a.C) * a.N;
    if (n == 0) return;
    projection_bwd_kernel<T><<<blocks_for(n), kThreads, 0, as_stream(stream)>>>(
        a, means, covars, quats, scales, viewmats, Ks, radii, v_means2d, v_depths, v_conics, v_comps, v_means, v_covars,
        v_quats, v_scales);
}

#define GK_INSTANTIATE(T)                                                                                          \
    template void projection_fwd_cuda<T>(const ProjectionArgs&, const T*, const T*, const T*, const T*, const T*,  \
                                         const T*, int32_t*, T*, T*, T*, T*, void*);                               \
    template void projection_bwd_cuda<T>(const ProjectionArgs&, const T*, const T*, const T*, const T*, const T*,  \
                                         const T*, const int32_t*, const T*, const T*, const T*, const T*, T*, T*, \
                                         T*, T*, void*);
GK_INSTANTIATE(float)
GK_INSTANTIATE(double)
#undef GK_INSTANTIATE

}  // namespace gk
