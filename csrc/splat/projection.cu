// Projection stage on CUDA: one thread per (camera, Gaussian). The math is gk_projection.h.
#include "cuda_common.cuh"
#include "gk_projection.h"
#include "kernels.h"

namespace gk {

template <typename T> __global__ void projection_fwd_kernel(ProjectionArgs a, ProjectionFwd<T> p) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= int64_t(a.C) * a.N) return;
    const int64_t c = i / a.N, n = i % a.N;
    Mat3<T> cov = world_covariance(n, p.covars, p.quats, p.scales);
    Vec3<T> mean = {p.means[n * 3], p.means[n * 3 + 1], p.means[n * 3 + 2]};
    Mat3<T> R;
    Vec3<T> t;
    load_viewmat(p.viewmats + c * 16, R, t);
    Camera<T> cam = load_camera(p.Ks + c * 9, a.width, a.height);
    Projected<T> pr = project_gaussian(mean, cov, R, t, cam, T(a.eps2d), T(a.near_plane), T(a.far_plane), T(a.radius_clip));
    store_projected(pr, i, p.radii, p.means2d, p.depths, p.conics, p.comps);
}

template <typename T> __global__ void projection_bwd_kernel(ProjectionArgs a, ProjectionBwd<T> p) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= int64_t(a.C) * a.N) return;
    if (p.radii[i * 2] <= 0 && p.radii[i * 2 + 1] <= 0) return;
    const int64_t c = i / a.N, n = i % a.N;
    Mat3<T> cov = world_covariance(n, p.covars, p.quats, p.scales);
    Vec3<T> mean = {p.means[n * 3], p.means[n * 3 + 1], p.means[n * 3 + 2]};
    Mat3<T> R;
    Vec3<T> t;
    load_viewmat(p.viewmats + c * 16, R, t);
    Camera<T> cam = load_camera(p.Ks + c * 9, a.width, a.height);
    Vec3<T> vm;
    Mat3<T> vcov;
    project_gaussian_vjp(mean, cov, R, t, cam, T(a.eps2d), p.v_means2d + i * 2, p.v_depths[i], p.v_conics + i * 3,
                         p.v_comps ? p.v_comps[i] : T(0), vm, vcov);
    // The VJP is linear in the upstream gradient, so per-camera terms can be summed atomically.
    atomicAdd(p.v_means + n * 3, vm.x);
    atomicAdd(p.v_means + n * 3 + 1, vm.y);
    atomicAdd(p.v_means + n * 3 + 2, vm.z);
    if (p.covars) {
        T vc[6];
        covar_from_upper_vjp(vcov, vc);
        for (int k = 0; k < 6; ++k) atomicAdd(p.v_covars + n * 6 + k, vc[k]);
    } else {
        T vq[4], vs[3];
        quat_scale_to_covar_vjp(p.quats + n * 4, p.scales + n * 3, vcov, vq, vs);
        for (int k = 0; k < 4; ++k) atomicAdd(p.v_quats + n * 4 + k, vq[k]);
        for (int k = 0; k < 3; ++k) atomicAdd(p.v_scales + n * 3 + k, vs[k]);
    }
}

template <typename T> void projection_fwd_cuda(const ProjectionArgs& a, const ProjectionFwd<T>& p, void* stream) {
    const int64_t n = int64_t(a.C) * a.N;
    if (n == 0) return;
    launch(projection_fwd_kernel<T>, blocks_for(n), kThreads, 0, stream, a, p);
}

template <typename T> void projection_bwd_cuda(const ProjectionArgs& a, const ProjectionBwd<T>& p, void* stream) {
    const int64_t n = int64_t(a.C) * a.N;
    if (n == 0) return;
    launch(projection_bwd_kernel<T>, blocks_for(n), kThreads, 0, stream, a, p);
}

template void projection_fwd_cuda<float>(const ProjectionArgs&, const ProjectionFwd<float>&, void*);
template void projection_fwd_cuda<double>(const ProjectionArgs&, const ProjectionFwd<double>&, void*);
template void projection_bwd_cuda<float>(const ProjectionArgs&, const ProjectionBwd<float>&, void*);
template void projection_bwd_cuda<double>(const ProjectionArgs&, const ProjectionBwd<double>&, void*);

}  // namespace gk
