// The CPU kernels' SIMD loops, compiled once per x86 instruction set and chosen at run time, so that one
// binary (a wheel) runs at full width on an AVX-512 machine and still runs on a CPU with SSE2 only.
//
// A kernel file (rasterize_cpu.cpp, ssim_cpu.cpp, attention_rows_cpu.cpp: setup.py's CPU_ISA_SOURCES) is
// compiled once per instruction set, with that set's -march and -DGK_CPU_ISA=<name>, and defines the
// members of gk::isa_<name>::Kernels below; everything else it defines lives in that namespace too. So
// no function compiled with wide instructions is shared with code that runs elsewhere: the linker keeps
// one copy of an inline function or template used by several objects, and would hand an AVX-512 copy
// to every caller. (gk_common.h forces its inline math to inline in these files; setup.py checks that
// their objects define no symbol outside their namespace, and tests/test_cpu_isa.py disassembles
// the module.) Other files call the kernels through dispatch().
//
// Portable builds (the default; GK_CPU_DISPATCH=1 on x86-64) hold avx512 (x86-64-v4), avx2 (x86-64-v3)
// and sse (x86-64, SSE2); the best one the CPU runs is chosen at the first call, or the one that
// GSPLAT_KIT_ISA names. Builds for one machine (-march=native) hold one set, `native`.
#pragma once

#include <cstddef>  // size_t, which kernels.h uses
#include <cstdint>
#include <vector>

#include "splat/kernels.h"

#ifndef GK_CPU_DISPATCH
#define GK_CPU_DISPATCH 0
#endif

namespace gk {

// The kernels of one instruction set.
#define GK_CPU_DECLARE_KERNELS(isa)                                                                                      \
    namespace isa_##isa {                                                                                                \
    struct Kernels {                                                                                                     \
        template <typename T> static void rasterize_fwd(const TileGrid& g, const Splats2D<T>& s, const RasterizeFwdOut<T>& o); \
        template <typename T> static void rasterize_bwd(const TileGrid& g, const Splats2D<T>& s, const RasterizeBwd<T>& b);    \
        /* SSIM over planes of H x W (ssim_cpu.cpp): moments [5][planes][H*W], smap and the t scratch as the op's. */    \
        template <typename T>                                                                                            \
        static void ssim_forward(const T* x, const T* y, const T* window, int k, int64_t planes, int H, int W, T* moments, \
                                 T* smap);                                                                               \
        template <typename T>                                                                                            \
        static void ssim_backward(const T* x, const T* y, const T* window, int k, int64_t planes, int H, int W,          \
                                  const T* moments, const T* grad, T* t, T* dx);                                         \
        /* The attention kernel's rows (attention_rows_cpu.cpp): softmax in place over the first K of rows of   */    \
        /* stride ld (a multiple of 16), and the cross edit of nr rows.                                            */    \
        static void softmax_rows(float* S, int nrows, int K, int ld);                                                    \
        template <typename T>                                                                                            \
        static void edit_rows(int nr, int ld, int K, int E, const int32_t* rows, const T* vals, const T* c, const T* own, \
                              const T* base, T* out);                                                                    \
    };                                                                                                                   \
    }

#if GK_CPU_DISPATCH
GK_CPU_DECLARE_KERNELS(avx512)
GK_CPU_DECLARE_KERNELS(avx2)
GK_CPU_DECLARE_KERNELS(sse)
#else
GK_CPU_DECLARE_KERNELS(native)
#endif
#undef GK_CPU_DECLARE_KERNELS

// In a kernel file: its namespace, gk::isa_<GK_CPU_ISA>.
#define GK_CPU_ISA_NS GK_CPU_ISA_NS_(GK_CPU_ISA)
#define GK_CPU_ISA_NS_(isa) GK_CPU_ISA_NS__(isa)
#define GK_CPU_ISA_NS__(isa) isa_##isa

namespace cpu {

enum class Isa : int8_t { sse, avx2, avx512, native };

// The instruction set the kernels run: chosen at the first call, from GSPLAT_KIT_ISA or the CPU (a bad
// GSPLAT_KIT_ISA raises a c10::Error naming the choices, at every call until it is fixed).
Isa selected();
// Its name: avx512, avx2 or sse; a native build names what it was compiled for (or "generic").
const char* selected_name();
// The names GSPLAT_KIT_ISA may take on this CPU in this build, best first.
std::vector<const char*> choices();
// Whether this build chooses at run time (a portable build) or was compiled for one CPU.
constexpr bool kDispatch = GK_CPU_DISPATCH != 0;

// Calls f with the selected instruction set's Kernels (an empty struct of static members).
template <typename F> decltype(auto) dispatch(F&& f) {
#if GK_CPU_DISPATCH
    switch (selected()) {
        case Isa::avx512: return f(isa_avx512::Kernels{});
        case Isa::avx2: return f(isa_avx2::Kernels{});
        default: return f(isa_sse::Kernels{});
    }
#else
    return f(isa_native::Kernels{});
#endif
}

}  // namespace cpu
}  // namespace gk
