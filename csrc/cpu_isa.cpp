// The choice of the CPU kernels' instruction set (cpu_isa.h), and the rasteriser's CPU launchers of
// kernels.h, which call the chosen set's kernels.
#include "cpu_isa.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <string>

namespace gk {
namespace cpu {
namespace {

struct Choice {
    Isa isa;
    const char* name;
    bool (*runs)();
};

#if GK_CPU_DISPATCH
// The x86-64 micro-architecture levels that setup.py compiles the sets for (libgcc also checks that
// the OS saves the wide registers).
bool runs_v4() { return __builtin_cpu_init(), __builtin_cpu_supports("x86-64-v4"); }
bool runs_v3() { return __builtin_cpu_init(), __builtin_cpu_supports("x86-64-v3"); }
bool runs_any() { return true; }
constexpr Choice kChoices[] = {{Isa::avx512, "avx512", runs_v4}, {Isa::avx2, "avx2", runs_v3}, {Isa::sse, "sse", runs_any}};
#else
#if defined(__AVX512F__)
constexpr const char* kNative = "avx512";
#elif defined(__AVX2__)
constexpr const char* kNative = "avx2";
#elif defined(__SSE2__)
constexpr const char* kNative = "sse";
#else
constexpr const char* kNative = "generic";
#endif
bool runs_native() { return true; }
constexpr Choice kChoices[] = {{Isa::native, kNative, runs_native}};
#endif

std::string joined(const std::vector<const char*>& names) {
    std::string s;
    for (const char* n : names) s += (s.empty() ? "" : ", ") + std::string(n);
    return s;
}

Isa choose() {
    const char* want = std::getenv("GSPLAT_KIT_ISA");
    for (const Choice& c : kChoices) {
        if (want && *want && std::strcmp(want, c.name) != 0) continue;
        if (c.runs()) return c.isa;
        TORCH_CHECK(false, "GSPLAT_KIT_ISA=", want, ": this CPU does not run ", want, " code (it runs: ", joined(choices()), ")");
    }
    TORCH_CHECK(false, "GSPLAT_KIT_ISA=", want, ": ",
                kDispatch ? "not an instruction set of gsplat_kit's CPU kernels (choose one of: " + joined(choices()) + ")"
                          : std::string("this build of gsplat_kit was compiled for one CPU (") + kChoices[0].name +
                                "); a portable build (GSPLAT_KIT_PORTABLE=1, the default of setup.py) chooses at run time");
}

}  // namespace

Isa selected() {
    static const Isa isa = choose();  // a throw leaves it unset: the next call tries again
    return isa;
}

const char* selected_name() {
    const Isa isa = selected();
    for (const Choice& c : kChoices)
        if (c.isa == isa) return c.name;
    return "?";
}

std::vector<const char*> choices() {
    std::vector<const char*> names;
    for (const Choice& c : kChoices)
        if (c.runs()) names.push_back(c.name);
    return names;
}

}  // namespace cpu

template <typename T> void rasterize_fwd_cpu(const TileGrid& g, const Splats2D<T>& s, const RasterizeFwdOut<T>& o) {
    cpu::dispatch([&](auto k) { k.template rasterize_fwd<T>(g, s, o); });
}
template <typename T> void rasterize_bwd_cpu(const TileGrid& g, const Splats2D<T>& s, const RasterizeBwd<T>& b) {
    cpu::dispatch([&](auto k) { k.template rasterize_bwd<T>(g, s, b); });
}

template void rasterize_fwd_cpu<float>(const TileGrid&, const Splats2D<float>&, const RasterizeFwdOut<float>&);
template void rasterize_fwd_cpu<double>(const TileGrid&, const Splats2D<double>&, const RasterizeFwdOut<double>&);
template void rasterize_bwd_cpu<float>(const TileGrid&, const Splats2D<float>&, const RasterizeBwd<float>&);
template void rasterize_bwd_cpu<double>(const TileGrid&, const Splats2D<double>&, const RasterizeBwd<double>&);

}  // namespace gk
