// The native ops' schemas, one per op, in torch's dispatcher: torch.ops.gsplat_kit.<op> runs the CPU or
// the CUDA implementation by the device of its tensors (registered beside each op: splat/splat_ops.cpp,
// attention/attention_ops.cpp, loss/ssim_ops.cpp). Abstract (fake) implementations for torch.compile
// are in gsplat_kit/_backend.py. The SIMT harness build (-DGK_SIMT) defines the kernel ops under
// gsplat_kit_simt instead (csrc/ops_common.h).
#include "ops_common.h"

#ifndef GK_SIMT
#include <torch/extension.h>  // only for the (empty) Python module below
#ifdef _OPENMP
#include <omp.h>
#endif

#include "attention/attention.h"
#include "cpu_isa.h"
#endif

GK_TORCH_LIBRARY(m) {
    m.def("projection_fwd(Tensor means, Tensor? covars, Tensor? quats, Tensor? scales, Tensor viewmats, Tensor Ks, "
          "int width, int height, float eps2d, float near_plane, float far_plane, float radius_clip) "
          "-> (Tensor radii, Tensor means2d, Tensor depths, Tensor conics, Tensor compensations)");
    m.def("projection_bwd(Tensor means, Tensor? covars, Tensor? quats, Tensor? scales, Tensor viewmats, Tensor Ks, "
          "int width, int height, float eps2d, Tensor radii, Tensor v_means2d, Tensor v_depths, Tensor v_conics, "
          "Tensor? v_comps) -> (Tensor v_means, Tensor v_covars, Tensor v_quats, Tensor v_scales)");
    m.def("sh_fwd(int degree, Tensor dirs, Tensor coeffs) -> Tensor");
    m.def("sh_bwd(int degree, Tensor dirs, Tensor coeffs, Tensor v_colors) -> (Tensor v_coeffs, Tensor v_dirs)");
    m.def("isect_tiles(Tensor means2d, Tensor radii, Tensor depths, int tile_size, int tiles_w, int tiles_h, int width, "
          "int height) -> (Tensor tiles_per_gauss, Tensor isect_ids, Tensor flatten_ids, Tensor isect_offsets)");
    m.def("rasterize_fwd(Tensor means2d, Tensor conics, Tensor colors, Tensor opacities, Tensor? backgrounds, "
          "Tensor isect_offsets, Tensor flatten_ids, int width, int height, int tile_size) "
          "-> (Tensor render_colors, Tensor render_alphas, Tensor last_ids)");
    m.def("rasterize_bwd(Tensor means2d, Tensor conics, Tensor colors, Tensor opacities, Tensor? backgrounds, "
          "Tensor isect_offsets, Tensor flatten_ids, int width, int height, int tile_size, Tensor render_alphas, "
          "Tensor last_ids, Tensor v_render_colors, Tensor v_render_alphas, bool absgrad) "
          "-> (Tensor v_means2d, Tensor v_means2d_abs, Tensor v_conics, Tensor v_colors, Tensor v_opacities)");
    // Fused attention with Prompt-to-Prompt map control (attention_math.h); adds into `store` in place.
    m.def("attention_forward(Tensor q, Tensor k, Tensor v, int heads, float scale, int[] src, int[] slot, "
          "Tensor? col_ptr=None, Tensor? rows=None, Tensor? vals=None, Tensor? c=None, Tensor(a!)? store=None, "
          "int[] store_idx=[]) -> Tensor");
#ifndef GK_SIMT
    m.def("ssim_forward(Tensor x, Tensor y, Tensor window) -> (Tensor ssim_map, Tensor moments)");
    m.def("ssim_backward(Tensor x, Tensor y, Tensor window, Tensor moments, Tensor grad) -> Tensor");
    // Facts about the build, for gsplat_kit._backend.describe() and the tests.
    m.def("cuda_compiled() -> bool", [] { return GSPLAT_KIT_WITH_CUDA != 0; });
    m.def("omp_max_threads() -> int", [] {
#ifdef _OPENMP
        return int64_t(omp_get_max_threads());
#else
        return int64_t(1);
#endif
    });
    // The instruction set the CPU kernels run (csrc/cpu_isa.h; a bad GSPLAT_KIT_ISA raises here), what
    // GSPLAT_KIT_ISA may choose on this CPU, and whether this build chooses at run time at all.
    m.def("cpu_isa() -> str", [] { return std::string(gk::cpu::selected_name()); });
    m.def("cpu_isa_choices() -> str[]", [] {
        std::vector<std::string> names;
        for (const char* n : gk::cpu::choices()) names.emplace_back(n);
        return names;
    });
    m.def("cpu_isa_dispatch() -> bool", [] { return gk::cpu::kDispatch; });
    // Whether the CPU attention products use torch's BLAS; `on` switches to the plain loops (False) or back.
    m.def("attention_cpu_blas(bool? on=None) -> bool", [](std::optional<bool> on) {
        if (on) gk::attn::set_cpu_blas(*on);
        return gk::attn::cpu_blas_available();
    });
#endif
}

#ifndef GK_SIMT
// `import gsplat_kit._C` loads this library, which registers the ops above; the module itself is empty.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.doc() = "gsplat_kit native kernels: see torch.ops.gsplat_kit"; }
#endif
