// Kernel launches and dynamic shared memory, written once for the two compilers of the .cu files:
// nvcc (real launches on a GPU) and the SIMT harness (g++ -DGK_SIMT against csrc/simt/: the same
// kernels executed by CPU threads for the tests).
#pragma once

#include <cuda_runtime.h>

#include <utility>

namespace gk {

// kernel<<<grid, block, smem, stream>>>(args...). The op that called the launcher checks the launch
// (C10_CUDA_KERNEL_LAUNCH_CHECK in csrc/ops_common.h).
template <typename... Params, typename... Args>
inline void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, void* stream, Args&&... args) {
#ifdef GK_SIMT
    (void)stream;
    simt::launch(kernel, grid, block, smem, std::forward<Args>(args)...);
#else
    kernel<<<grid, block, smem, static_cast<cudaStream_t>(stream)>>>(std::forward<Args>(args)...);
#endif
}

}  // namespace gk

// The block's dynamic shared memory (the launch's smem bytes) as an array `name` of `type`; under the
// harness a bounds-checked view.
#ifdef GK_SIMT
#define GK_DYNAMIC_SHARED(type, name) const auto name = ::gk::simt::dynamic_shared<type>()
#else
#define GK_DYNAMIC_SHARED(type, name)          \
    extern __shared__ unsigned char name##_raw[]; \
    type* name = reinterpret_cast<type*>(name##_raw)
#endif
