// Small vector/matrix types and constants shared by the CPU (C++) and CUDA rasteriser kernels.
// Every function here is __host__ __device__ so that both backends run the very same math.
#pragma once

#include <cmath>
#include <cstdint>

// In a CPU kernel file compiled once per instruction set (csrc/cpu_isa.h), the inline functions here
// always inline: an out-of-line copy would be one symbol shared with the other sets' objects.
#if defined(GK_CPU_ISA)
#define GK_CPU_INLINE inline __attribute__((always_inline))
#else
#define GK_CPU_INLINE inline
#endif

#ifdef __CUDACC__
#define GK_HD __host__ __device__ __forceinline__
#else
#define GK_HD GK_CPU_INLINE
#endif

namespace gk {

// Unqualified math calls below pick the float overloads (plain ::sqrt would promote to double).
using std::ceil;
using std::exp;
using std::floor;
using std::sqrt;

// Compositing rules (3DGS forward.cu): alpha is capped, faint splats skipped, pixels stop early.
constexpr float kAlphaMax = 0.99f;
constexpr float kAlphaMin = 1.0f / 255.0f;
constexpr float kTransmittanceMin = 1e-4f;
constexpr float kSigmaExtent = 3.0f;  // radii cover 3 standard deviations

template <typename T> struct Vec2 { T x, y; };
template <typename T> struct Vec3 { T x, y, z; };
// Row-major 2x2 and 3x3 matrices; m[row][col].
template <typename T> struct Mat2 { T m[2][2]; };
template <typename T> struct Mat3 { T m[3][3]; };

// Cephes' expf: e^x = 2^n e^r with n = round(x / ln2), |r| <= ln2 / 2, and e^r by a degree-5
// polynomial (~1 ulp). Written once for a float and for a GCC vector of floats (the CPU loops, below);
// branch-free, so that loops over it vectorise. The GPU uses its own __expf.
template <typename V> GK_CPU_INLINE V exp_reduced(V r) {
    V y = r * 1.9875691500e-4f + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    return y * (r * r) + r + 1.0f;
}

GK_CPU_INLINE float exp_poly(float x) {
    x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
    const float t = x * 1.44269504088896341f;
    const int32_t ni = int32_t(t + (t < 0.f ? -0.5f : 0.5f));  // round to nearest (no floorf: it blocks vectorisation)
    const float n = float(ni);
    const float r = x - n * 0.693359375f + n * 2.12194440e-4f;  // ln2 in two parts
    return exp_reduced(r) * __builtin_bit_cast(float, (ni + 127) << 23);  // e^r * 2^n
}

#ifndef __CUDACC__
// Explicit SIMD for the CPU kernels' hot loops (GCC vector extensions): the widest vectors the build
// targets, so the same source is AVX-512, AVX2 or SSE code (a portable build compiles the kernels once
// per instruction set: csrc/cpu_isa.h).
namespace simd {
#if defined(__AVX512F__)
constexpr int kBytes = 64;
#elif defined(__AVX__)
constexpr int kBytes = 32;
#else
constexpr int kBytes = 16;
#endif
typedef float VF __attribute__((vector_size(kBytes)));
typedef int32_t VI __attribute__((vector_size(kBytes)));  // lane masks: -1 true, 0 false
constexpr int kLanes = kBytes / sizeof(float);

GK_CPU_INLINE VF load(const float* p) {
    VF v;
    __builtin_memcpy(&v, p, sizeof v);  // unaligned load
    return v;
}
GK_CPU_INLINE VI load(const int32_t* p) {
    VI v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
}
GK_CPU_INLINE void store(float* p, VF v) { __builtin_memcpy(p, &v, sizeof v); }
GK_CPU_INLINE void store(int32_t* p, VI v) { __builtin_memcpy(p, &v, sizeof v); }
GK_CPU_INLINE VF abs(VF x) { return x < 0.f ? -x : x; }
GK_CPU_INLINE float sum(VF x) {
    float s = 0;
    for (int l = 0; l < kLanes; ++l) s += x[l];
    return s;
}
GK_CPU_INLINE int count(VI masks) {  // true lanes of a mask, or of a sum of masks
    int n = 0;
    for (int l = 0; l < kLanes; ++l) n -= masks[l];
    return n;
}
}  // namespace simd

GK_CPU_INLINE simd::VF exp_poly(simd::VF x) {
    x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
    const simd::VF n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;  // round(x / ln2): 1.5 * 2^23 trick
    const simd::VF r = x - n * 0.693359375f + n * 2.12194440e-4f;
    const simd::VI two_n = (__builtin_convertvector(n, simd::VI) + 127) << 23;  // 2^n as float bits
    return exp_reduced(r) * (simd::VF)two_n;
}
#endif

// e^x: float (or a vector of floats) through exp_poly on the CPU and __expf on the GPU; double exactly.
template <typename T> GK_HD T gk_exp(T x) {
#ifdef __CUDA_ARCH__
    if constexpr (sizeof(T) == 4) return __expf(x);  // the GPU's fast exp (2 ulp), as gsplat and 3DGS use
    return exp(x);
#else
    if constexpr (sizeof(T) == sizeof(double)) return exp(x);
    else return exp_poly(x);
#endif
}
template <typename T> GK_HD T gk_min(T a, T b) { return a < b ? a : b; }
template <typename T> GK_HD T gk_max(T a, T b) { return a > b ? a : b; }

template <typename T> GK_HD Vec3<T> operator+(Vec3<T> a, Vec3<T> b) { return {a.x + b.x, a.y + b.y, a.z + b.z}; }
template <typename T> GK_HD Vec3<T> operator-(Vec3<T> a, Vec3<T> b) { return {a.x - b.x, a.y - b.y, a.z - b.z}; }
template <typename T> GK_HD Vec3<T> operator*(T s, Vec3<T> a) { return {s * a.x, s * a.y, s * a.z}; }
template <typename T> GK_HD T dot(Vec3<T> a, Vec3<T> b) { return a.x * b.x + a.y * b.y + a.z * b.z; }

template <typename T> GK_HD Mat3<T> matmul(const Mat3<T>& a, const Mat3<T>& b) {
    Mat3<T> r;
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) r.m[i][j] = a.m[i][0] * b.m[0][j] + a.m[i][1] * b.m[1][j] + a.m[i][2] * b.m[2][j];
    return r;
}
template <typename T> GK_HD Mat3<T> transpose(const Mat3<T>& a) {
    Mat3<T> r;
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) r.m[i][j] = a.m[j][i];
    return r;
}
template <typename T> GK_HD Vec3<T> matvec(const Mat3<T>& a, Vec3<T> v) {
    return {a.m[0][0] * v.x + a.m[0][1] * v.y + a.m[0][2] * v.z,
            a.m[1][0] * v.x + a.m[1][1] * v.y + a.m[1][2] * v.z,
            a.m[2][0] * v.x + a.m[2][1] * v.y + a.m[2][2] * v.z};
}
// a^T v
template <typename T> GK_HD Vec3<T> matvec_t(const Mat3<T>& a, Vec3<T> v) {
    return {a.m[0][0] * v.x + a.m[1][0] * v.y + a.m[2][0] * v.z,
            a.m[0][1] * v.x + a.m[1][1] * v.y + a.m[2][1] * v.z,
            a.m[0][2] * v.x + a.m[1][2] * v.y + a.m[2][2] * v.z};
}

// Loads the rotation and translation of a row-major 4x4 world-to-camera matrix.
template <typename T> GK_HD void load_viewmat(const T* vm, Mat3<T>& R, Vec3<T>& t) {
    for (int i = 0; i < 3; ++i) {
        for (int j = 0; j < 3; ++j) R.m[i][j] = vm[i * 4 + j];
    }
    t = {vm[3], vm[7], vm[11]};
}

}  // namespace gk
