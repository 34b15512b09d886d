// Launchers of the fused attention-map control kernel, on raw pointers (no torch here, so the kernels
// compile fast). attention_ops.cpp checks the tensors and dispatches; the math is in attention_math.h.
// Layouts (row-major, contiguous), with B elements of H heads each (index b*H + h, diffusers' order):
//   q [B*H, Q, D], k [B*H, K, D], v [B*H, K, Dv], out [B*H, Q, Dv], store [S, Q, K] (the sum over heads
//   is added to it).
#pragma once

#include <cstdint>

#include "attention_math.h"

namespace gk::attn {

template <typename T> struct AttnArgs {
    int B, H, Q, K, D, Dv;
    T scale;
    const T* q;
    const T* k;
    const T* v;
    Routing route;
    EditCols<T> edit;  // col_ptr == nullptr when no element has a slot
    T* store;          // nullptr: nothing stored
    T* out;
    T* edit_values;    // CUDA only: [B*H, K, Dv] workspace for the edited values (when an element has a slot)
};

// Largest query/key and value head dims of the CUDA kernel (a thread holds a row of each in registers;
// SD's head dims are 40..160).
constexpr int kCudaMaxHead = 256;

template <typename T> void attention_fwd_cpu(const AttnArgs<T>& a);
// Whether torch's BLAS (sgemm_/dgemm_) is linked for the CPU products, and a switch to the plain loops
// (on by default where available; tests turn it off to check the loops too).
bool cpu_blas_available();
void set_cpu_blas(bool on);
template <typename T> void attention_fwd_cuda(const AttnArgs<T>& a, void* stream);

}  // namespace gk::attn
