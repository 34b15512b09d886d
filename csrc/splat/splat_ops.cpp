// Rasteriser ops: tensor checks, allocation, and dispatch to the CPU (*_cpu.cpp) or CUDA (*.cu)
// launchers in kernels.h. The Python wrappers in gsplat_kit/render/ validate user input first and
// raise ValueErrors; the checks here guard the native boundary itself.
#include <torch/extension.h>

#include "kernels.h"

#if GSPLAT_KIT_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#define GK_STREAM (void*)c10::cuda::getCurrentCUDAStream().stream()
#endif

namespace {

using torch::Tensor;
using OptTensor = std::optional<Tensor>;

#define CHECK_INPUT(x, dt)                                                                     \
    TORCH_CHECK((x).is_contiguous(), #x " must be contiguous");                                \
    TORCH_CHECK((x).scalar_type() == (dt), #x " has dtype ", (x).scalar_type(), ", expected ", (dt))

template <typename T> const T* ptr_or_null(const OptTensor& t) { return t.has_value() ? t->data_ptr<T>() : nullptr; }

[[noreturn]] void no_cuda(const char* what) {
    TORCH_CHECK(false, what, ": gsplat_kit._C was built without CUDA kernels; rebuild with a CUDA build of torch and nvcc present");
}

#define DISPATCH_FLOAT(dtype, NAME, ...)                                                        \
    [&] {                                                                                       \
        if ((dtype) == torch::kFloat32) { using scalar_t = float; return __VA_ARGS__(); }       \
        if ((dtype) == torch::kFloat64) { using scalar_t = double; return __VA_ARGS__(); }      \
        TORCH_CHECK(false, NAME ": expected float32 or float64, got ", (dtype));               \
    }()

// ---- projection -------------------------------------------------------------------------------------

std::vector<Tensor> projection_fwd(Tensor means, OptTensor covars, OptTensor quats, OptTensor scales, Tensor viewmats,
                                   Tensor Ks, int64_t width, int64_t height, double eps2d, double near_plane,
                                   double far_plane, double radius_clip) {
    const auto dt = means.scalar_type();
    CHECK_INPUT(means, dt); CHECK_INPUT(viewmats, dt); CHECK_INPUT(Ks, dt);
    if (covars) { CHECK_INPUT(*covars, dt); } else {
        TORCH_CHECK(quats && scales, "projection_fwd: quats and scales are needed without covars");
        CHECK_INPUT(*quats, dt); CHECK_INPUT(*scales, dt);
    }
    const int64_t N = means.size(0), C = viewmats.size(0);
    gk::ProjectionArgs a{int(C), int(N), int(width), int(height), eps2d, near_plane, far_plane, radius_clip};
    auto opt = means.options();
    Tensor radii = torch::zeros({C, N, 2}, opt.dtype(torch::kInt32));
    Tensor means2d = torch::zeros({C, N, 2}, opt), depths = torch::zeros({C, N}, opt);
    Tensor conics = torch::zeros({C, N, 3}, opt), comps = torch::zeros({C, N}, opt);
    DISPATCH_FLOAT(dt, "projection_fwd", [&] {
        auto args = std::make_tuple(means.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(covars), ptr_or_null<scalar_t>(quats),
                                    ptr_or_null<scalar_t>(scales));
        if (means.is_cuda()) {
#if GSPLAT_KIT_WITH_CUDA
            gk::projection_fwd_cuda<scalar_t>(a, std::get<0>(args), std::get<1>(args), std::get<2>(args), std::get<3>(args),
                                              viewmats.data_ptr<scalar_t>(), Ks.data_ptr<scalar_t>(), radii.data_ptr<int32_t>(),
                                              means2d.data_ptr<scalar_t>(), depths.data_ptr<scalar_t>(),
                                              conics.data_ptr<scalar_t>(), comps.data_ptr<scalar_t>(), GK_STREAM);
#else
            no_cuda("projection_fwd");
#endif
        } else {
            gk::projection_fwd_cpu<scalar_t>(a, std::get<0>(args), std::get<1>(args), std::get<2>(args), std::get<3>(args),
                                             viewmats.data_ptr<scalar_t>(), Ks.data_ptr<scalar_t>(), radii.data_ptr<int32_t>(),
                                             means2d.data_ptr<scalar_t>(), depths.data_ptr<scalar_t>(),
                                             conics.data_ptr<scalar_t>(), comps.data_ptr<scalar_t>());
        }
    });
    return {radii, means2d, depths, conics, comps};
}

std::vector<Tensor> projection_bwd(Tensor means, OptTensor covars, OptTensor quats, OptTensor scales, Tensor viewmats,
                                   Tensor Ks, int64_t width, int64_t height, double eps2d, Tensor radii, Tensor v_means2d,
                                   Tensor v_depths, Tensor v_conics, OptTensor v_comps) {
    const auto dt = means.scalar_type();
    CHECK_INPUT(radii, torch::kInt32); CHECK_INPUT(v_means2d, dt); CHECK_INPUT(v_depths, dt); CHECK_INPUT(v_conics, dt);
    if (v_comps) { CHECK_INPUT(*v_comps, dt); }
    const int64_t N = means.size(0), C = viewmats.size(0);
    gk::ProjectionArgs a{int(C), int(N), int(width), int(height), eps2d, 0.0, 0.0, 0.0};
    Tensor v_means = torch::zeros_like(means);
    Tensor v_covars = covars ? torch::zeros_like(*covars) : Tensor();
    Tensor v_quats = covars ? Tensor() : torch::zeros_like(*quats);
    Tensor v_scales = covars ? Tensor() : torch::zeros_like(*scales);
    auto p = [](Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; };
    DISPATCH_FLOAT(dt, "projection_bwd", [&] {
        using S = scalar_t;
        if (means.is_cuda()) {
#if GSPLAT_KIT_WITH_CUDA
            gk::projection_bwd_cuda<S>(a, means.data_ptr<S>(), ptr_or_null<S>(covars), ptr_or_null<S>(quats), ptr_or_null<S>(scales),
                                       viewmats.data_ptr<S>(), Ks.data_ptr<S>(), radii.data_ptr<int32_t>(), v_means2d.data_ptr<S>(),
                                       v_depths.data_ptr<S>(), v_conics.data_ptr<S>(), ptr_or_null<S>(v_comps), v_means.data_ptr<S>(),
                                       (S*)p(v_covars), (S*)p(v_quats), (S*)p(v_scales), GK_STREAM);
#else
            no_cuda("projection_bwd");
#endif
        } else {
            gk::projection_bwd_cpu<S>(a, means.data_ptr<S>(), ptr_or_null<S>(covars), ptr_or_null<S>(quats), ptr_or_null<S>(scales),
                                      viewmats.data_ptr<S>(), Ks.data_ptr<S>(), radii.data_ptr<int32_t>(), v_means2d.data_ptr<S>(),
                                      v_depths.data_ptr<S>(), v_conics.data_ptr<S>(), ptr_or_null<S>(v_comps), v_means.data_ptr<S>(),
                                      (S*)p(v_covars), (S*)p(v_quats), (S*)p(v_scales));
        }
    });
    return {v_means, v_covars, v_quats, v_scales};
}

// ---- spherical harmonics ----------------------------------------------------------------------------

Tensor sh_fwd(int64_t degree, Tensor dirs, Tensor coeffs) {
    const auto dt = dirs.scalar_type();
    CHECK_INPUT(dirs, dt); CHECK_INPUT(coeffs, dt);
    TORCH_CHECK(degree >= 0 && degree <= 3, "sh degree must be 0..3");
    const int64_t M = dirs.size(0), P = coeffs.size(0), K = coeffs.size(1);
    TORCH_CHECK(P > 0 || M == 0, "sh_fwd: no coefficients");
    Tensor colors = torch::zeros({M, 3}, dirs.options());
    if (M == 0) return colors;
    DISPATCH_FLOAT(dt, "sh_fwd", [&] {
        if (dirs.is_cuda()) {
#if GSPLAT_KIT_WITH_CUDA
            gk::sh_fwd_cuda<scalar_t>(int(degree), M, int(K), dirs.data_ptr<scalar_t>(), coeffs.data_ptr<scalar_t>(), P,
                                      colors.data_ptr<scalar_t>(), GK_STREAM);
#else
            no_cuda("sh_fwd");
#endif
        } else {
            gk::sh_fwd_cpu<scalar_t>(int(degree), M, int(K), dirs.data_ptr<scalar_t>(), coeffs.data_ptr<scalar_t>(), P,
                                     colors.data_ptr<scalar_t>());
        }
    });
    return colors;
}

std::vector<Tensor> sh_bwd(int64_t degree, Tensor dirs, Tensor coeffs, Tensor v_colors) {
    const auto dt = dirs.scalar_type();
    CHECK_INPUT(dirs, dt); CHECK_INPUT(coeffs, dt); CHECK_INPUT(v_colors, dt);
    const int64_t M = dirs.size(0), P = coeffs.size(0), K = coeffs.size(1);
    Tensor v_coeffs = torch::zeros_like(coeffs), v_dirs = torch::zeros_like(dirs);
    if (M == 0) return {v_coeffs, v_dirs};
    DISPATCH_FLOAT(dt, "sh_bwd", [&] {
        if (dirs.is_cuda()) {
#if GSPLAT_KIT_WITH_CUDA
            gk::sh_bwd_cuda<scalar_t>(int(degree), M, int(K), dirs.data_ptr<scalar_t>(), coeffs.data_ptr<scalar_t>(), P,
                                      v_colors.data_ptr<scalar_t>(), v_coeffs.data_ptr<scalar_t>(), v_dirs.data_ptr<scalar_t>(), GK_STREAM);
#else
            no_cuda("sh_bwd");
#endif
        } else {
            gk::sh_bwd_cpu<scalar_t>(int(degree), M, int(K), dirs.data_ptr<scalar_t>(), coeffs.data_ptr<scalar_t>(), P,
                                     v_colors.data_ptr<scalar_t>(), v_coeffs.data_ptr<scalar_t>(), v_dirs.data_ptr<scalar_t>());
        }
    });
    return {v_coeffs, v_dirs};
}

// ---- tile binning -----------------------------------------------------------------------------------

std::vector<Tensor> isect_tiles(Tensor means2d, Tensor radii, Tensor depths, int64_t tile_size, int64_t tiles_w,
                                int64_t tiles_h, int64_t width, int64_t height) {
    const auto dt = means2d.scalar_type();
    CHECK_INPUT(means2d, dt); CHECK_INPUT(depths, dt); CHECK_INPUT(radii, torch::kInt32);
    const int64_t C = means2d.size(0), N = means2d.size(1);
    TORCH_CHECK(C * tiles_w * tiles_h < (int64_t(1) << 31), "isect_tiles: too many tiles");
    int key_bits = 0;
    while ((int64_t(1) << key_bits) < tiles_w * tiles_h) ++key_bits;
    int cam_bits = 0;
    while ((int64_t(1) << cam_bits) < C) ++cam_bits;
    TORCH_CHECK(32 + key_bits + cam_bits <= 63, "isect_tiles: camera and tile ids do not fit the 64-bit sort key");
    gk::TileGrid g{int(C), int(tile_size), int(tiles_w), int(tiles_h), int(width), int(height)};
    auto opt = means2d.options();
    Tensor tiles_per_gauss = torch::zeros({C, N}, opt.dtype(torch::kInt32));
    Tensor offsets = torch::zeros({C, tiles_h, tiles_w}, opt.dtype(torch::kInt32));
    Tensor isect_ids, flatten_ids;
    DISPATCH_FLOAT(dt, "isect_tiles", [&] {
        if (means2d.is_cuda()) {
#if GSPLAT_KIT_WITH_CUDA
            gk::isect_count_cuda<scalar_t>(g, int(N), means2d.data_ptr<scalar_t>(), radii.data_ptr<int32_t>(),
                                           tiles_per_gauss.data_ptr<int32_t>(), GK_STREAM);
            Tensor cum = torch::cumsum(tiles_per_gauss.view({-1}), 0, torch::kInt64);
            const int64_t n = C * N ? cum[C * N - 1].item<int64_t>() : 0;
            TORCH_CHECK(n < (int64_t(1) << 31), "isect_tiles: more than 2^31 tile intersections");
            isect_ids = torch::empty({n}, opt.dtype(torch::kInt64));
            flatten_ids = torch::empty({n}, opt.dtype(torch::kInt32));
            if (n > 0) {
                Tensor keys_tmp = torch::empty({n}, opt.dtype(torch::kInt64));
                Tensor ids_tmp = torch::empty({n}, opt.dtype(torch::kInt32));
                const int total_bits = 32 + key_bits + cam_bits;
                size_t tmp_bytes = gk::isect_sort_temp_bytes(n, total_bits);
                Tensor tmp = torch::empty({int64_t(tmp_bytes) + 1}, opt.dtype(torch::kUInt8));
                gk::isect_fill_sorted_cuda<scalar_t>(g, int(N), means2d.data_ptr<scalar_t>(), radii.data_ptr<int32_t>(),
                                                     depths.data_ptr<scalar_t>(), cum.data_ptr<int64_t>(), n,
                                                     keys_tmp.data_ptr<int64_t>(), ids_tmp.data_ptr<int32_t>(), tmp.data_ptr(),
                                                     tmp_bytes, total_bits, isect_ids.data_ptr<int64_t>(),
                                                     flatten_ids.data_ptr<int32_t>(), offsets.data_ptr<int32_t>(), GK_STREAM);
            }
#else
            no_cuda("isect_tiles");
#endif
        } else {
            const int64_t n = gk::isect_count_cpu<scalar_t>(g, int(N), means2d.data_ptr<scalar_t>(), radii.data_ptr<int32_t>(),
                                                            tiles_per_gauss.data_ptr<int32_t>());
            TORCH_CHECK(n < (int64_t(1) << 31), "isect_tiles: more than 2^31 tile intersections");
            isect_ids = torch::empty({n}, opt.dtype(torch::kInt64));
            flatten_ids = torch::empty({n}, opt.dtype(torch::kInt32));
            gk::isect_fill_sorted_cpu<scalar_t>(g, int(N), means2d.data_ptr<scalar_t>(), radii.data_ptr<int32_t>(),
                                                depths.data_ptr<scalar_t>(), n, isect_ids.data_ptr<int64_t>(),
                                                flatten_ids.data_ptr<int32_t>(), offsets.data_ptr<int32_t>());
        }
    });
    return {tiles_per_gauss, isect_ids, flatten_ids, offsets};
}

// ---- rasterisation ----------------------------------------------------------------------------------

std::vector<Tensor> rasterize_fwd(Tensor means2d, Tensor conics, Tensor colors, Tensor opacities, OptTensor backgrounds,
                                  Tensor isect_offsets, Tensor flatten_ids, int64_t width, int64_t height, int64_t tile_size) {
    const auto dt = means2d.scalar_type();
    CHECK_INPUT(means2d, dt); CHECK_INPUT(conics, dt); CHECK_INPUT(colors, dt); CHECK_INPUT(opacities, dt);
    CHECK_INPUT(isect_offsets, torch::kInt32); CHECK_INPUT(flatten_ids, torch::kInt32);
    if (backgrounds) { CHECK_INPUT(*backgrounds, dt); }
    const int64_t C = means2d.size(0), D = colors.size(-1);
    gk::TileGrid g{int(C), int(tile_size), int(isect_offsets.size(2)), int(isect_offsets.size(1)), int(width), int(height)};
    auto opt = means2d.options();
    Tensor out_colors = torch::empty({C, height, width, D}, opt);
    Tensor out_alphas = torch::empty({C, height, width, 1}, opt);
    Tensor last_ids = torch::empty({C, height, width}, opt.dtype(torch::kInt32));
    const int64_t n = flatten_ids.size(0);
    DISPATCH_FLOAT(dt, "rasterize_fwd", [&] {
        using S = scalar_t;
        if (means2d.is_cuda()) {
#if GSPLAT_KIT_WITH_CUDA
            TORCH_CHECK(D <= 32, "rasterize: the CUDA kernels take at most 32 channels, got ", D);
            gk::rasterize_fwd_cuda<S>(g, int(D), means2d.data_ptr<S>(), conics.data_ptr<S>(), colors.data_ptr<S>(),
                                      opacities.data_ptr<S>(), ptr_or_null<S>(backgrounds), isect_offsets.data_ptr<int32_t>(),
                                      flatten_ids.data_ptr<int32_t>(), n, out_colors.data_ptr<S>(), out_alphas.data_ptr<S>(),
                                      last_ids.data_ptr<int32_t>(), GK_STREAM);
#else
            no_cuda("rasterize_fwd");
#endif
        } else {
            gk::rasterize_fwd_cpu<S>(g, int(D), means2d.data_ptr<S>(), conics.data_ptr<S>(), colors.data_ptr<S>(),
                                     opacities.data_ptr<S>(), ptr_or_null<S>(backgrounds), isect_offsets.data_ptr<int32_t>(),
                                     flatten_ids.data_ptr<int32_t>(), n, out_colors.data_ptr<S>(), out_alphas.data_ptr<S>(),
                                     last_ids.data_ptr<int32_t>());
        }
    });
    return {out_colors, out_alphas, last_ids};
}

std::vector<Tensor> rasterize_bwd(Tensor means2d, Tensor conics, Tensor colors, Tensor opacities, OptTensor backgrounds,
                                  Tensor isect_offsets, Tensor flatten_ids, int64_t width, int64_t height, int64_t tile_size,
                                  Tensor render_alphas, Tensor last_ids, Tensor v_render_colors, Tensor v_render_alphas,
                                  bool absgrad) {
    const auto dt = means2d.scalar_type();
    CHECK_INPUT(render_alphas, dt); CHECK_INPUT(last_ids, torch::kInt32);
    CHECK_INPUT(v_render_colors, dt); CHECK_INPUT(v_render_alphas, dt);
    const int64_t C = means2d.size(0), D = colors.size(-1);
    gk::TileGrid g{int(C), int(tile_size), int(isect_offsets.size(2)), int(isect_offsets.size(1)), int(width), int(height)};
    Tensor v_means2d = torch::zeros_like(means2d), v_conics = torch::zeros_like(conics);
    Tensor v_colors = torch::zeros_like(colors), v_opacities = torch::zeros_like(opacities);
    Tensor v_abs = absgrad ? torch::zeros_like(means2d) : Tensor();
    const int64_t n = flatten_ids.size(0);
    DISPATCH_FLOAT(dt, "rasterize_bwd", [&] {
        using S = scalar_t;
        S* abs_ptr = absgrad ? v_abs.data_ptr<S>() : nullptr;
        if (means2d.is_cuda()) {
#if GSPLAT_KIT_WITH_CUDA
            TORCH_CHECK(D <= 32, "rasterize: the CUDA kernels take at most 32 channels, got ", D);
            gk::rasterize_bwd_cuda<S>(g, int(D), means2d.data_ptr<S>(), conics.data_ptr<S>(), colors.data_ptr<S>(),
                                      opacities.data_ptr<S>(), ptr_or_null<S>(backgrounds), isect_offsets.data_ptr<int32_t>(),
                                      flatten_ids.data_ptr<int32_t>(), n, render_alphas.data_ptr<S>(), last_ids.data_ptr<int32_t>(),
                                      v_render_colors.data_ptr<S>(), v_render_alphas.data_ptr<S>(), v_means2d.data_ptr<S>(),
                                      abs_ptr, v_conics.data_ptr<S>(), v_colors.data_ptr<S>(), v_opacities.data_ptr<S>(), GK_STREAM);
#else
            no_cuda("rasterize_bwd");
#endif
        } else {
            gk::rasterize_bwd_cpu<S>(g, int(D), means2d.data_ptr<S>(), conics.data_ptr<S>(), colors.data_ptr<S>(),
                                     opacities.data_ptr<S>(), ptr_or_null<S>(backgrounds), isect_offsets.data_ptr<int32_t>(),
                                     flatten_ids.data_ptr<int32_t>(), n, render_alphas.data_ptr<S>(), last_ids.data_ptr<int32_t>(),
                                     v_render_colors.data_ptr<S>(), v_render_alphas.data_ptr<S>(), v_means2d.data_ptr<S>(),
                                     abs_ptr, v_conics.data_ptr<S>(), v_colors.data_ptr<S>(), v_opacities.data_ptr<S>());
        }
    });
    return {v_means2d, v_abs, v_conics, v_colors, v_opacities};
}

}  // namespace

void register_splat(pybind11::module_& m) {
    m.def("projection_fwd", &projection_fwd);
    m.def("projection_bwd", &projection_bwd);
    m.def("sh_fwd", &sh_fwd);
    m.def("sh_bwd", &sh_bwd);
    m.def("isect_tiles", &isect_tiles);
    m.def("rasterize_fwd", &rasterize_fwd);
    m.def("rasterize_bwd", &rasterize_bwd);
}
