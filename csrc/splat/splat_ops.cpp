// Rasteriser ops: tensor checks, allocation, and the call of the CPU (*_cpu.cpp) or CUDA (*.cu)
// launchers in kernels.h; schemas in csrc/bindings.cpp. The Python wrappers in gsplat_kit/render/
// validate user input first and raise ValueErrors; the checks here guard the native boundary itself.
#include "../ops_common.h"
#include "gk_blend.h"
#include "kernels.h"

namespace gk::ops {
namespace {

using Tensors3 = std::tuple<Tensor, Tensor, Tensor>;
using Tensors4 = std::tuple<Tensor, Tensor, Tensor, Tensor>;
using Tensors5 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

Tensor none_tensor(const Tensor& like) { return at::empty({0}, like.options()); }  // an absent output

// ---- projection -------------------------------------------------------------------------------------

template <bool kCuda>
Tensors5 projection_fwd(const Tensor& means, const OptTensor& covars, const OptTensor& quats, const OptTensor& scales,
                        const Tensor& viewmats, const Tensor& Ks, int64_t width, int64_t height, double eps2d,
                        double near_plane, double far_plane, double radius_clip) {
    const auto dt = means.scalar_type();
    GK_CHECK_INPUT(means, dt); GK_CHECK_INPUT(viewmats, dt); GK_CHECK_INPUT(Ks, dt);
    if (covars) { GK_CHECK_INPUT(*covars, dt); } else {
        TORCH_CHECK(quats && scales, "projection_fwd: quats and scales are needed without covars");
        GK_CHECK_INPUT(*quats, dt); GK_CHECK_INPUT(*scales, dt);
    }
    const int64_t N = means.size(0), C = viewmats.size(0);
    const ProjectionArgs a{int(C), int(N), int(width), int(height), eps2d, near_plane, far_plane, radius_clip};
    const auto opt = means.options();
    Tensor radii = at::zeros({C, N, 2}, opt.dtype(at::kInt));
    Tensor means2d = at::zeros({C, N, 2}, opt), depths = at::zeros({C, N}, opt);
    Tensor conics = at::zeros({C, N, 3}, opt), comps = at::zeros({C, N}, opt);
    GK_DISPATCH_FLOAT(dt, "projection_fwd", [&] {
        using S = scalar_t;
        const ProjectionFwd<S> p{means.data_ptr<S>(), ptr_or_null<S>(covars), ptr_or_null<S>(quats), ptr_or_null<S>(scales),
                                 viewmats.data_ptr<S>(), Ks.data_ptr<S>(), radii.data_ptr<int32_t>(), means2d.data_ptr<S>(),
                                 depths.data_ptr<S>(), conics.data_ptr<S>(), comps.data_ptr<S>()};
        if constexpr (kCuda) {
            const CudaScope cs(means);
            projection_fwd_cuda<S>(a, p, cs.stream());
            cs.check();
        } else {
            projection_fwd_cpu<S>(a, p);
        }
    });
    return {radii, means2d, depths, conics, comps};
}

// Outputs v_means, v_covars, v_quats, v_scales; the parameterisation not given comes back empty.
template <bool kCuda>
Tensors4 projection_bwd(const Tensor& means, const OptTensor& covars, const OptTensor& quats, const OptTensor& scales,
                        const Tensor& viewmats, const Tensor& Ks, int64_t width, int64_t height, double eps2d,
                        const Tensor& radii, const Tensor& v_means2d, const Tensor& v_depths, const Tensor& v_conics,
                        const OptTensor& v_comps) {
    const auto dt = means.scalar_type();
    GK_CHECK_INPUT(radii, at::kInt); GK_CHECK_INPUT(v_means2d, dt); GK_CHECK_INPUT(v_depths, dt); GK_CHECK_INPUT(v_conics, dt);
    if (v_comps) { GK_CHECK_INPUT(*v_comps, dt); }
    TORCH_CHECK(covars || (quats && scales), "projection_bwd: quats and scales are needed without covars");
    const int64_t N = means.size(0), C = viewmats.size(0);
    const ProjectionArgs a{int(C), int(N), int(width), int(height), eps2d, 0.0, 0.0, 0.0};
    Tensor v_means = at::zeros_like(means);
    Tensor v_covars = covars ? at::zeros_like(*covars) : none_tensor(means);
    Tensor v_quats = covars ? none_tensor(means) : at::zeros_like(*quats);
    Tensor v_scales = covars ? none_tensor(means) : at::zeros_like(*scales);
    GK_DISPATCH_FLOAT(dt, "projection_bwd", [&] {
        using S = scalar_t;
        const ProjectionBwd<S> p{means.data_ptr<S>(), ptr_or_null<S>(covars), ptr_or_null<S>(quats), ptr_or_null<S>(scales),
                                 viewmats.data_ptr<S>(), Ks.data_ptr<S>(), radii.data_ptr<int32_t>(), v_means2d.data_ptr<S>(),
                                 v_depths.data_ptr<S>(), v_conics.data_ptr<S>(), ptr_or_null<S>(v_comps), v_means.data_ptr<S>(),
                                 ptr_or_null<S>(v_covars), ptr_or_null<S>(v_quats), ptr_or_null<S>(v_scales)};
        if constexpr (kCuda) {
            const CudaScope cs(means);
            projection_bwd_cuda<S>(a, p, cs.stream());
            cs.check();
        } else {
            projection_bwd_cpu<S>(a, p);
        }
    });
    return {v_means, v_covars, v_quats, v_scales};
}

// ---- spherical harmonics ----------------------------------------------------------------------------

template <bool kCuda> Tensor sh_fwd(int64_t degree, const Tensor& dirs, const Tensor& coeffs) {
    const auto dt = dirs.scalar_type();
    GK_CHECK_INPUT(dirs, dt); GK_CHECK_INPUT(coeffs, dt);
    TORCH_CHECK(degree >= 0 && degree <= 3, "sh_fwd: degree must be 0..3, got ", degree);
    const int64_t M = dirs.size(0), P = coeffs.size(0), K = coeffs.size(1);
    TORCH_CHECK(P > 0 || M == 0, "sh_fwd: no coefficients");
    TORCH_CHECK(K >= (degree + 1) * (degree + 1), "sh_fwd: coeffs has ", K, " bases, degree ", degree, " needs ",
                (degree + 1) * (degree + 1));
    Tensor colors = at::zeros({M, 3}, dirs.options());
    if (M == 0) return colors;
    GK_DISPATCH_FLOAT(dt, "sh_fwd", [&] {
        using S = scalar_t;
        if constexpr (kCuda) {
            const CudaScope cs(dirs);
            sh_fwd_cuda<S>(int(degree), M, int(K), dirs.data_ptr<S>(), coeffs.data_ptr<S>(), P, colors.data_ptr<S>(), cs.stream());
            cs.check();
        } else {
            sh_fwd_cpu<S>(int(degree), M, int(K), dirs.data_ptr<S>(), coeffs.data_ptr<S>(), P, colors.data_ptr<S>());
        }
    });
    return colors;
}

template <bool kCuda>
std::tuple<Tensor, Tensor> sh_bwd(int64_t degree, const Tensor& dirs, const Tensor& coeffs, const Tensor& v_colors) {
    const auto dt = dirs.scalar_type();
    GK_CHECK_INPUT(dirs, dt); GK_CHECK_INPUT(coeffs, dt); GK_CHECK_INPUT(v_colors, dt);
    const int64_t M = dirs.size(0), P = coeffs.size(0), K = coeffs.size(1);
    Tensor v_coeffs = at::zeros_like(coeffs), v_dirs = at::zeros_like(dirs);
    if (M == 0) return {v_coeffs, v_dirs};
    GK_DISPATCH_FLOAT(dt, "sh_bwd", [&] {
        using S = scalar_t;
        if constexpr (kCuda) {
            const CudaScope cs(dirs);
            sh_bwd_cuda<S>(int(degree), M, int(K), dirs.data_ptr<S>(), coeffs.data_ptr<S>(), P, v_colors.data_ptr<S>(),
                           v_coeffs.data_ptr<S>(), v_dirs.data_ptr<S>(), cs.stream());
            cs.check();
        } else {
            sh_bwd_cpu<S>(int(degree), M, int(K), dirs.data_ptr<S>(), coeffs.data_ptr<S>(), P, v_colors.data_ptr<S>(),
                          v_coeffs.data_ptr<S>(), v_dirs.data_ptr<S>());
        }
    });
    return {v_coeffs, v_dirs};
}

// ---- tile binning -----------------------------------------------------------------------------------

void check_tile_size(int64_t tile_size, const char* op) {
    TORCH_CHECK(tile_size_supported(int(tile_size)), op, ": tile_size must be 8, 16 or 32, got ", tile_size);
}

// Outputs tiles_per_gauss [C, N], isect_ids [M], flatten_ids [M], isect_offsets [C, tiles_h, tiles_w].
template <bool kCuda>
Tensors4 isect_tiles(const Tensor& means2d, const Tensor& radii, const Tensor& depths, int64_t tile_size, int64_t tiles_w,
                     int64_t tiles_h, int64_t width, int64_t height) {
    const auto dt = means2d.scalar_type();
    GK_CHECK_INPUT(means2d, dt); GK_CHECK_INPUT(depths, dt); GK_CHECK_INPUT(radii, at::kInt);
    check_tile_size(tile_size, "isect_tiles");
    const int64_t C = means2d.size(0), N = means2d.size(1);
    TORCH_CHECK(C * tiles_w * tiles_h < (int64_t(1) << 31), "isect_tiles: too many tiles");
    const IsectKeyBits bits = isect_key_bits(C, tiles_w * tiles_h);
    TORCH_CHECK(bits.total() <= 63, "isect_tiles: camera and tile ids do not fit the 64-bit sort key");
    const TileGrid g{int(C), int(tile_size), int(tiles_w), int(tiles_h), int(width), int(height)};
    const auto opt = means2d.options();
    Tensor tiles_per_gauss = at::zeros({C, N}, opt.dtype(at::kInt));
    Tensor offsets = at::zeros({C, tiles_h, tiles_w}, opt.dtype(at::kInt));
    Tensor isect_ids, flatten_ids;
    GK_DISPATCH_FLOAT(dt, "isect_tiles", [&] {
        using S = scalar_t;
        if constexpr (kCuda) {
            const CudaScope cs(means2d);
            isect_count_cuda<S>(g, int(N), means2d.data_ptr<S>(), radii.data_ptr<int32_t>(), tiles_per_gauss.data_ptr<int32_t>(),
                                cs.stream());
            cs.check();
            Tensor cum = at::cumsum(tiles_per_gauss.view({-1}), 0, at::kLong);
            const int64_t n = C * N > 0 ? cum[C * N - 1].item<int64_t>() : 0;
            TORCH_CHECK(n < (int64_t(1) << 31), "isect_tiles: more than 2^31 tile intersections");
            isect_ids = at::empty({n}, opt.dtype(at::kLong));
            flatten_ids = at::empty({n}, opt.dtype(at::kInt));
            if (n > 0) {
                Tensor keys_tmp = at::empty({n}, opt.dtype(at::kLong));
                Tensor ids_tmp = at::empty({n}, opt.dtype(at::kInt));
                const size_t tmp_bytes = isect_sort_temp_bytes(n, bits.total());
                Tensor tmp = at::empty({int64_t(tmp_bytes) + 1}, opt.dtype(at::kByte));
                isect_fill_sorted_cuda<S>(g, int(N), means2d.data_ptr<S>(), radii.data_ptr<int32_t>(), depths.data_ptr<S>(),
                                          cum.data_ptr<int64_t>(), n, keys_tmp.data_ptr<int64_t>(), ids_tmp.data_ptr<int32_t>(),
                                          tmp.data_ptr(), tmp_bytes, bits.total(), isect_ids.data_ptr<int64_t>(),
                                          flatten_ids.data_ptr<int32_t>(), offsets.data_ptr<int32_t>(), cs.stream());
                cs.check();
            }
        } else {
            const int64_t n = isect_count_cpu<S>(g, int(N), means2d.data_ptr<S>(), radii.data_ptr<int32_t>(),
                                                 tiles_per_gauss.data_ptr<int32_t>());
            TORCH_CHECK(n < (int64_t(1) << 31), "isect_tiles: more than 2^31 tile intersections");
            isect_ids = at::empty({n}, opt.dtype(at::kLong));
            flatten_ids = at::empty({n}, opt.dtype(at::kInt));
            isect_fill_sorted_cpu<S>(g, int(N), means2d.data_ptr<S>(), radii.data_ptr<int32_t>(), depths.data_ptr<S>(), n,
                                     isect_ids.data_ptr<int64_t>(), flatten_ids.data_ptr<int32_t>(),
                                     offsets.data_ptr<int32_t>());
        }
    });
    return {tiles_per_gauss, isect_ids, flatten_ids, offsets};
}

// ---- rasterisation ----------------------------------------------------------------------------------

template <typename S> Splats2D<S> splats_2d(const Tensor& means2d, const Tensor& conics, const Tensor& colors,
                                            const Tensor& opacities, const OptTensor& backgrounds,
                                            const Tensor& isect_offsets, const Tensor& flatten_ids) {
    return {int(colors.size(-1)), means2d.data_ptr<S>(), conics.data_ptr<S>(), colors.data_ptr<S>(), opacities.data_ptr<S>(),
            ptr_or_null<S>(backgrounds), isect_offsets.data_ptr<int32_t>(), flatten_ids.data_ptr<int32_t>(),
            flatten_ids.size(0)};
}

TileGrid raster_grid(const Tensor& means2d, const Tensor& colors, const Tensor& isect_offsets, int64_t width,
                     int64_t height, int64_t tile_size, bool cuda, const char* op) {
    check_tile_size(tile_size, op);
    const int64_t D = colors.size(-1);
    TORCH_CHECK(!cuda || D <= kCudaMaxChannels, op, ": the CUDA kernels take at most ", kCudaMaxChannels,
                " colour channels, got ", D);
    TORCH_CHECK(D >= 1, op, ": colors need at least one channel");
    return {int(means2d.size(0)), int(tile_size), int(isect_offsets.size(2)), int(isect_offsets.size(1)), int(width), int(height)};
}

// Outputs render_colors [C, H, W, D], render_alphas [C, H, W, 1], last_ids [C, H, W].
template <bool kCuda>
Tensors3 rasterize_fwd(const Tensor& means2d, const Tensor& conics, const Tensor& colors, const Tensor& opacities,
                       const OptTensor& backgrounds, const Tensor& isect_offsets, const Tensor& flatten_ids, int64_t width,
                       int64_t height, int64_t tile_size) {
    const auto dt = means2d.scalar_type();
    GK_CHECK_INPUT(means2d, dt); GK_CHECK_INPUT(conics, dt); GK_CHECK_INPUT(colors, dt); GK_CHECK_INPUT(opacities, dt);
    GK_CHECK_INPUT(isect_offsets, at::kInt); GK_CHECK_INPUT(flatten_ids, at::kInt);
    if (backgrounds) { GK_CHECK_INPUT(*backgrounds, dt); }
    const TileGrid g = raster_grid(means2d, colors, isect_offsets, width, height, tile_size, kCuda, "rasterize_fwd");
    const int64_t C = g.C, D = colors.size(-1);
    const auto opt = means2d.options();
    Tensor out_colors = at::empty({C, height, width, D}, opt);
    Tensor out_alphas = at::empty({C, height, width, 1}, opt);
    Tensor last_ids = at::empty({C, height, width}, opt.dtype(at::kInt));
    GK_DISPATCH_FLOAT(dt, "rasterize_fwd", [&] {
        using S = scalar_t;
        const Splats2D<S> s = splats_2d<S>(means2d, conics, colors, opacities, backgrounds, isect_offsets, flatten_ids);
        const RasterizeFwdOut<S> o{out_colors.data_ptr<S>(), out_alphas.data_ptr<S>(), last_ids.data_ptr<int32_t>()};
        if constexpr (kCuda) {
            const CudaScope cs(means2d);
            rasterize_fwd_cuda<S>(g, s, o, cs.stream());
            cs.check();
        } else {
            rasterize_fwd_cpu<S>(g, s, o);
        }
    });
    return {out_colors, out_alphas, last_ids};
}

// Outputs v_means2d, v_means2d_abs (empty unless absgrad), v_conics, v_colors, v_opacities.
template <bool kCuda>
Tensors5 rasterize_bwd(const Tensor& means2d, const Tensor& conics, const Tensor& colors, const Tensor& opacities,
                       const OptTensor& backgrounds, const Tensor& isect_offsets, const Tensor& flatten_ids, int64_t width,
                       int64_t height, int64_t tile_size, const Tensor& render_alphas, const Tensor& last_ids,
                       const Tensor& v_render_colors, const Tensor& v_render_alphas, bool absgrad) {
    const auto dt = means2d.scalar_type();
    GK_CHECK_INPUT(means2d, dt); GK_CHECK_INPUT(conics, dt); GK_CHECK_INPUT(colors, dt); GK_CHECK_INPUT(opacities, dt);
    GK_CHECK_INPUT(isect_offsets, at::kInt); GK_CHECK_INPUT(flatten_ids, at::kInt);
    if (backgrounds) { GK_CHECK_INPUT(*backgrounds, dt); }
    GK_CHECK_INPUT(render_alphas, dt); GK_CHECK_INPUT(last_ids, at::kInt);
    GK_CHECK_INPUT(v_render_colors, dt); GK_CHECK_INPUT(v_render_alphas, dt);
    const TileGrid g = raster_grid(means2d, colors, isect_offsets, width, height, tile_size, kCuda, "rasterize_bwd");
    Tensor v_means2d = at::zeros_like(means2d), v_conics = at::zeros_like(conics);
    Tensor v_colors = at::zeros_like(colors), v_opacities = at::zeros_like(opacities);
    Tensor v_abs = absgrad ? at::zeros_like(means2d) : none_tensor(means2d);
    GK_DISPATCH_FLOAT(dt, "rasterize_bwd", [&] {
        using S = scalar_t;
        const Splats2D<S> s = splats_2d<S>(means2d, conics, colors, opacities, backgrounds, isect_offsets, flatten_ids);
        const RasterizeBwd<S> b{render_alphas.data_ptr<S>(), last_ids.data_ptr<int32_t>(), v_render_colors.data_ptr<S>(),
                                v_render_alphas.data_ptr<S>(), v_means2d.data_ptr<S>(), ptr_or_null<S>(v_abs),
                                v_conics.data_ptr<S>(), v_colors.data_ptr<S>(), v_opacities.data_ptr<S>()};
        if constexpr (kCuda) {
            const CudaScope cs(means2d);
            rasterize_bwd_cuda<S>(g, s, b, cs.stream());
            cs.check();
        } else {
            rasterize_bwd_cpu<S>(g, s, b);
        }
    });
    return {v_means2d, v_abs, v_conics, v_colors, v_opacities};
}

}  // namespace
}  // namespace gk::ops

#define GK_SPLAT_IMPLS(m, CUDA)                                            \
    m.impl("projection_fwd", TORCH_FN(gk::ops::projection_fwd<CUDA>));     \
    m.impl("projection_bwd", TORCH_FN(gk::ops::projection_bwd<CUDA>));     \
    m.impl("sh_fwd", TORCH_FN(gk::ops::sh_fwd<CUDA>));                     \
    m.impl("sh_bwd", TORCH_FN(gk::ops::sh_bwd<CUDA>));                     \
    m.impl("isect_tiles", TORCH_FN(gk::ops::isect_tiles<CUDA>));           \
    m.impl("rasterize_fwd", TORCH_FN(gk::ops::rasterize_fwd<CUDA>));       \
    m.impl("rasterize_bwd", TORCH_FN(gk::ops::rasterize_bwd<CUDA>));
GK_REGISTER_OPS(GK_SPLAT_IMPLS)
