// Projection stage on the CPU: OpenMP over Gaussians (cameras in the inner loop, so the backward can
// sum over cameras without atomics). The math is csrc/include/gk_projection.h.
#include "gk_projection.h"
#include "kernels.h"

namespace gk {

template <typename T>
void projection_fwd_cpu(const ProjectionArgs& a, const T* means, const T* covars, const T* quats, const T* scales,
                        const T* viewmats, const T* Ks, int32_t* radii, T* means2d, T* depths, T* conics, T* comps) {
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < a.N; ++n) {
        Mat3<T> cov = world_covariance(n, covars, quats, scales);
        Vec3<T> mean = {means[n * 3], means[n * 3 + 1], means[n * 3 + 2]};
        for (int c = 0; c < a.C; ++c) {
            Mat3<T> R;
            Vec3<T> t;
            load_viewmat(viewmats + c * 16, R, t);
            Camera<T> cam = load_camera(Ks + c * 9, a.width, a.height);
            Projected<T> p = project_gaussian(mean, cov, R, t, cam, T(a.eps2d), T(a.near_plane), T(a.far_plane), T(a.radius_clip));
            store_projected(p, int64_t(c) * a.N + n, radii, means2d, depths, conics, comps);
        }
    }
}

template <typename T>
void projection_bwd_cpu(const ProjectionArgs& a, const T* means, const T* covars, const T* quats, const T* scales,
                        const T* viewmats, const T* Ks, const int32_t* radii, const T* v_means2d, const T* v_depths,
                        const T* v_conics, const T* v_comps, T* v_means, T* v_covars, T* v_quats, T* v_scales) {
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < a.N; ++n) {
        Mat3<T> cov = world_covariance(n, covars, quats, scales);
        Vec3<T> mean = {means[n * 3], means[n * 3 + 1], means[n * 3 + 2]};
        Vec3<T> vm = {0, 0, 0};
        Mat3<T> vcov = {};
        bool any = false;
        for (int c = 0; c < a.C; ++c) {
            int64_t i = int64_t(c) * a.N + n;
            if (radii[i * 2] <= 0 && radii[i * 2 + 1] <= 0) continue;  // culled: no gradient
            any = true;
            Mat3<T> R;
            Vec3<T> t;
            load_viewmat(viewmats + c * 16, R, t);
            Camera<T> cam = load_camera(Ks + c * 9, a.width, a.height);
            Vec3<T> vmc;
            Mat3<T> vcovc;
            project_gaussian_vjp(mean, cov, R, t, cam, T(a.eps2d), v_means2d + i * 2, v_depths[i], v_conics + i * 3,
                                 v_comps ? v_comps[i] : T(0), vmc, vcovc);
            vm = vm + vmc;
            for (int r = 0; r < 3; ++r)
                for (int s = 0; s < 3; ++s) vcov.m[r][s] += vcovc.m[r][s];
        }
        v_means[n * 3] = vm.x;
        v_means[n * 3 + 1] = vm.y;
        v_means[n * 3 + 2] = vm.z;
        if (covars) {
            covar_from_upper_vjp(vcov, v_covars + n * 6);
        } else if (any) {
            quat_scale_to_covar_vjp(quats + n * 4, scales + n * 3, vcov, v_quats + n * 4, v_scales + n * 3);
        }
    }
}

#define GK_INSTANTIATE(T)                                                                                         \
    template void projection_fwd_cpu<T>(const ProjectionArgs&, const T*, const T*, const T*, const T*, const T*,  \
                                        const T*, int32_t*, T*, T*, T*, T*);                                       \
    template void projection_bwd_cpu<T>(const ProjectionArgs&, const T*, const T*, const T*, const T*, const T*,  \
                                        const T*, const int32_t*, const T*, const T*, const T*, const T*, T*, T*, \
                                        T*, T*);
GK_INSTANTIATE(float)
GK_INSTANTIATE(double)
#undef GK_INSTANTIATE

}  // namespace gk
