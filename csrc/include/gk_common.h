// Small vector/matrix types and constants shared by the CPU (C++) and CUDA rasteriser kernels.
// Every function here is __host__ __device__ so that both backends run the very same math.
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define GK_HD __host__ __device__ __forceinline__
#else
#define GK_HD inline
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

// exp(x) for float on the host: Cephes' expf (range reduction + degree-5 polynomial, ~1 ulp) written
// branch-free so that the CPU compositing loops vectorise.
inline float exp_poly(float x) {
    x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
    const float t = x * 1.44269504088896341f;
    const int32_t ni = int32_t(t + (t < 0.f ? -0.5f : 0.5f));  // round to nearest (no floorf: it blocks vectorisation)
    const float n = float(ni);
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float y = 1.9875691500e-4f;
    y = y * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * (r * r) + r + 1.0f;
    return y * __builtin_bit_cast(float, (ni + 127) << 23);  // y * 2^n
}

template <typename T> GK_HD T gk_exp(T x) {
#ifdef __CUDA_ARCH__
    if constexpr (sizeof(T) == 4) return __expf(x);  // the GPU's fast exp (2 ulp), as gsplat and 3DGS use
    return exp(x);
#else
    if constexpr (sizeof(T) == 4) return exp_poly(x);
    return exp(x);
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
