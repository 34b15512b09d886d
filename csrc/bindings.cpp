// The one pybind11 module, gsplat_kit._C. Each component registers its own functions.
#include <torch/extension.h>
#ifdef _OPENMP
#include <omp.h>
#endif

void register_splat(pybind11::module_& m);      // csrc/splat/splat_ops.cpp
void register_attention(pybind11::module_& m);  // csrc/attention/attention_ops.cpp
void register_loss(pybind11::module_& m);       // csrc/loss/ssim_cpu.cpp

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "gsplat_kit native kernels (C++ CPU, and CUDA when compiled in)";
    m.def("cuda_compiled", [] { return GSPLAT_KIT_WITH_CUDA != 0; }, "Whether CUDA kernels are compiled in.");
    m.def("omp_max_threads", [] {
#ifdef _OPENMP
        return omp_get_max_threads();
#else
        return 1;
#endif
    });
    register_splat(m);
    register_attention(m);
    register_loss(m);
}
