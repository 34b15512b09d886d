// Projection stage on the CPU: OpenMP over Gaussians (cameras in the inner loop, so the backward can
// sum over cameras without atomics). The math is csrc/include/gk_projection.h.
#include "gk_projection.h"
#include "kernels.h"

namespace gk {

template <typename T> void projection_fwd_cpu(const ProjectionArgs& a, const ProjectionFwd<T>& p) {
    const T *means = p.means, *covars = p.covars, *quats = p.quats, *scales = p.scales, *viewmats = p.viewmats, *Ks = p.Ks;
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < a.N; ++n) {
        Mat3<T> cov = world_covariance(n, covars, quats, scales);
        Vec3<T> mean = {means[n * 3], means[n * 3 + 1], means[n * 3 + 2]};
        for (int c = 0; c < a.C; ++c) {
            Mat3<T> R;
            Vec3<T> t;
            load_viewmat(viewmats + c * 16, R, t);
            Camera<T> cam = load_camera(Ks + c * 9, a.width, a.height);
            Projected<T> pr = project_gaussian(mean, cov, R, t, cam, T(a.eps2d), T(a.near_plane), T(a.far_plane), T(a.radius_clip));
            store_projected(pr, int64_t(c) * a.N + n, p.radii, p.means2d, p.depths, p.conics, p.comps);
        }
    }
}

template <typename T> void projection_bwd_cpu(const ProjectionArgs& a, const ProjectionBwd<T>& p) {
    const T *means = p.means, *covars = p.covars, *quats = p.quats, *scales = p.scales, *viewmats = p.viewmats, *Ks = p.Ks;
    const int32_t* radii = p.radii;
    const T *v_means2d = p.v_means2d, *v_depths = p.v_depths, *v_conics = p.v_conics, *v_comps = p.v_comps;
    T *v_means = p.v_means, *v_covars = p.v_covars, *v_quats = p.v_quats, *v_scales = p.v_scales;
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

template void projection_fwd_cpu<float>(const ProjectionArgs&, const ProjectionFwd<float>&);
template void projection_fwd_cpu<double>(const ProjectionArgs&, const ProjectionFwd<double>&);
template void projection_bwd_cpu<float>(const ProjectionArgs&, const ProjectionBwd<float>&);
template void projection_bwd_cpu<double>(const ProjectionArgs&, const ProjectionBwd<double>&);

}  // namespace gk
