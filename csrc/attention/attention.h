// Launchers of the fused attention-map control kernel, on raw pointers (no torch here, so the kernels
// compile fast). attention_ops.cpp checks the tensors and dispatches; the math is in attention_math.h.
// Layouts (row-major, contiguous), with B elements of H heads each (index b*H + h, diffusers' order):
//   q [B*H, Q, D], out [B*H, Q, Dv], store [S, Q, K] (the sum over heads is added to it).
//   CPU:  kt [B*H, D, Kp] (keys transposed, zero-padded to Kp), vp [B*H, K, Dvp] (values zero-padded).
//   CUDA: k [B*H, K, D], v [B*H, K, Dv].
#pragma once

#include <cstdint>

#include "attention_math.h"

namespace gk::attn {

template <typename T> struct AttnArgs {
    int B, H, Q, K, D, Dv;
    int Kp, Dvp;  // padded sizes of kt / vp (CPU only)
    T scale;
    const T* q;
    const T* k;  // CPU: kt; CUDA: k
    const T* v;  // CPU: vp; CUDA: v
    Routing route;
    EditCols<T> edit;  // col_ptr == nullptr when no element has a slot
    T* store;          // nullptr: nothing stored
    T* out;
};

// Largest value head dim of the CUDA kernel (a per-thread accumulator; SD head dims are 40..160).
constexpr int kCudaMaxDv = 256;

// Padding granularity of the CPU layouts (one SIMD register tile wide).
constexpr int kCpuPad = 8;

template <typename T> void attention_fwd_cpu(const AttnArgs<T>& a);
template <typename T> void attention_fwd_cuda(const AttnArgs<T>& a, void* stream);

}  // namespace gk::attn
