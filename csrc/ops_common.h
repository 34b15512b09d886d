// What the op files share: the library namespace the ops register in, input checks, float dispatch,
// and the CUDA scope (device guard, stream, launch check) of every CUDA implementation.
//
// Each op is written once as `template <bool kCuda> op(...)` and registered twice: for the CPU key with
// the *_cpu launchers and for the CUDA key with the *_cuda launchers. The SIMT harness build
// (-DGK_SIMT, csrc/simt/) compiles the same op files and registers the CUDA implementations, executed
// on the CPU, under the namespace gsplat_kit_simt for the CPU key, so tests run them on CPU tensors.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>

#if defined(GK_SIMT)
#define GK_OPS_NS gsplat_kit_simt
#define GK_WITH_CUDA_IMPL 1
#elif GSPLAT_KIT_WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#define GK_OPS_NS gsplat_kit
#define GK_WITH_CUDA_IMPL 1
#else
#define GK_OPS_NS gsplat_kit
#define GK_WITH_CUDA_IMPL 0
#endif

// TORCH_LIBRARY* stringify their namespace argument: expand GK_OPS_NS first.
#define GK_TORCH_LIBRARY_(ns, m) TORCH_LIBRARY(ns, m)
#define GK_TORCH_LIBRARY(m) GK_TORCH_LIBRARY_(GK_OPS_NS, m)
#define GK_TORCH_LIBRARY_IMPL_(ns, key, m) TORCH_LIBRARY_IMPL(ns, key, m)
#define GK_TORCH_LIBRARY_IMPL(key, m) GK_TORCH_LIBRARY_IMPL_(GK_OPS_NS, key, m)
// Registers the op's CPU implementation, and its CUDA one where compiled (the harness: on the CPU key).
#if defined(GK_SIMT)
#define GK_REGISTER_OPS(REGISTER)                                     \
    GK_TORCH_LIBRARY_IMPL(CPU, m) { REGISTER(m, true) }
#elif GSPLAT_KIT_WITH_CUDA
#define GK_REGISTER_OPS(REGISTER)                                     \
    GK_TORCH_LIBRARY_IMPL(CPU, m) { REGISTER(m, false) }              \
    GK_TORCH_LIBRARY_IMPL(CUDA, m) { REGISTER(m, true) }
#else
#define GK_REGISTER_OPS(REGISTER) \
    GK_TORCH_LIBRARY_IMPL(CPU, m) { REGISTER(m, false) }
#endif

namespace gk::ops {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

#define GK_CHECK_INPUT(x, dt)                                                                  \
    TORCH_CHECK((x).is_contiguous(), #x " must be contiguous");                                \
    TORCH_CHECK((x).scalar_type() == (dt), #x " has dtype ", (x).scalar_type(), ", expected ", (dt))

#define GK_DISPATCH_FLOAT(dtype, NAME, ...)                                                     \
    [&] {                                                                                       \
        if ((dtype) == at::kFloat) { using scalar_t = float; return __VA_ARGS__(); }            \
        if ((dtype) == at::kDouble) { using scalar_t = double; return __VA_ARGS__(); }          \
        TORCH_CHECK(false, NAME ": expected float32 or float64, got ", (dtype));               \
    }()

template <typename T> const T* ptr_or_null(const OptTensor& t) { return t.has_value() ? t->data_ptr<T>() : nullptr; }
template <typename T> T* ptr_or_null(Tensor& t) { return t.numel() ? t.data_ptr<T>() : nullptr; }

// Around every CUDA launcher call: the device of the op's tensors is current, launchers get its
// stream, and check() turns a failed launch into an error at the op that made it.
#if defined(GK_SIMT) || !GSPLAT_KIT_WITH_CUDA
struct CudaScope {
    explicit CudaScope(const Tensor&) {}
    void* stream() const { return nullptr; }
    void check() const {}
};
#else
struct CudaScope {
    c10::cuda::CUDAGuard guard;
    explicit CudaScope(const Tensor& t) : guard(t.device()) {}
    void* stream() const { return c10::cuda::getCurrentCUDAStream().stream(); }
    void check() const { C10_CUDA_KERNEL_LAUNCH_CHECK(); }
};
#endif

}  // namespace gk::ops
