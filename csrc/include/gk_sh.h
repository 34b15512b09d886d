// Real spherical harmonics up to degree 3 (the basis of 3DGS's auxiliary.h), evaluated at a view
// direction, and its vector-Jacobian product with respect to the coefficients and the direction.
#pragma once

#include "gk_common.h"

namespace gk {

constexpr double kSH_C0 = 0.28209479177387814;
constexpr double kSH_C1 = 0.4886025119029199;
constexpr double kSH_C2[5] = {1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396};
constexpr double kSH_C3[7] = {-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
                              -0.4570457994644658, 1.445305721320277, -0.5900435899266435};

// basis[k] for k < (degree+1)^2 at the unit direction (x, y, z); also the derivatives d basis / d(x,y,z)
// when `grad` is not null (grad[k] = {dx, dy, dz}).
template <typename T> GK_HD void sh_basis(int degree, T x, T y, T z, T basis[16], T (*grad)[3]) {
    basis[0] = T(kSH_C0);
    if (grad) grad[0][0] = grad[0][1] = grad[0][2] = 0;
    if (degree < 1) return;
    const T c1 = T(kSH_C1);
    basis[1] = -c1 * y;
    basis[2] = c1 * z;
    basis[3] = -c1 * x;
    if (grad) {
        grad[1][0] = 0; grad[1][1] = -c1; grad[1][2] = 0;
        grad[2][0] = 0; grad[2][1] = 0;   grad[2][2] = c1;
        grad[3][0] = -c1; grad[3][1] = 0; grad[3][2] = 0;
    }
    if (degree < 2) return;
    T xx = x * x, yy = y * y, zz = z * z, xy = x * y, yz = y * z, xz = x * z;
    const T c20 = T(kSH_C2[0]), c21 = T(kSH_C2[1]), c22 = T(kSH_C2[2]), c23 = T(kSH_C2[3]), c24 = T(kSH_C2[4]);
    basis[4] = c20 * xy;
    basis[5] = c21 * yz;
    basis[6] = c22 * (2 * zz - xx - yy);
    basis[7] = c23 * xz;
    basis[8] = c24 * (xx - yy);
    if (grad) {
        grad[4][0] = c20 * y;      grad[4][1] = c20 * x;      grad[4][2] = 0;
        grad[5][0] = 0;            grad[5][1] = c21 * z;      grad[5][2] = c21 * y;
        grad[6][0] = -2 * c22 * x; grad[6][1] = -2 * c22 * y; grad[6][2] = 4 * c22 * z;
        grad[7][0] = c23 * z;      grad[7][1] = 0;            grad[7][2] = c23 * x;
        grad[8][0] = 2 * c24 * x;  grad[8][1] = -2 * c24 * y; grad[8][2] = 0;
    }
    if (degree < 3) return;
    const T c30 = T(kSH_C3[0]), c31 = T(kSH_C3[1]), c32 = T(kSH_C3[2]), c33 = T(kSH_C3[3]), c34 = T(kSH_C3[4]),
            c35 = T(kSH_C3[5]), c36 = T(kSH_C3[6]);
    basis[9] = c30 * y * (3 * xx - yy);
    basis[10] = c31 * xy * z;
    basis[11] = c32 * y * (4 * zz - xx - yy);
    basis[12] = c33 * z * (2 * zz - 3 * xx - 3 * yy);
    basis[13] = c34 * x * (4 * zz - xx - yy);
    basis[14] = c35 * z * (xx - yy);
    basis[15] = c36 * x * (xx - 3 * yy);
    if (grad) {
        grad[9][0] = c30 * 6 * xy;                grad[9][1] = c30 * (3 * xx - 3 * yy);       grad[9][2] = 0;
        grad[10][0] = c31 * yz;                   grad[10][1] = c31 * xz;                    grad[10][2] = c31 * xy;
        grad[11][0] = -2 * c32 * xy;              grad[11][1] = c32 * (4 * zz - xx - 3 * yy); grad[11][2] = 8 * c32 * yz;
        grad[12][0] = -6 * c33 * xz;              grad[12][1] = -6 * c33 * yz;               grad[12][2] = c33 * (6 * zz - 3 * xx - 3 * yy);
        grad[13][0] = c34 * (4 * zz - 3 * xx - yy); grad[13][1] = -2 * c34 * xy;             grad[13][2] = 8 * c34 * xz;
        grad[14][0] = 2 * c35 * xz;               grad[14][1] = -2 * c35 * yz;               grad[14][2] = c35 * (xx - yy);
        grad[15][0] = c36 * (3 * xx - 3 * yy);    grad[15][1] = -6 * c36 * xy;               grad[15][2] = 0;
    }
}

// color[d] = sum_k basis_k(dir / |dir|) * coeffs[k * D + d], for k < (degree+1)^2.
template <typename T> GK_HD void sh_eval(int degree, Vec3<T> dir, const T* coeffs, int D, T* color) {
    T inv = T(1) / sqrt(dot(dir, dir));
    T basis[16];
    sh_basis<T>(degree, dir.x * inv, dir.y * inv, dir.z * inv, basis, nullptr);
    int K = (degree + 1) * (degree + 1);
    for (int d = 0; d < D; ++d) {
        T s = 0;
        for (int k = 0; k < K; ++k) s += basis[k] * coeffs[k * D + d];
        color[d] = s;
    }
}

// Accumulates v_coeffs (+=) and returns v_dir for the unnormalised direction.
template <typename T> GK_HD Vec3<T> sh_eval_vjp(int degree, Vec3<T> dir, const T* coeffs, int D, const T* v_color, T* v_coeffs) {
    T inv = T(1) / sqrt(dot(dir, dir));
    Vec3<T> u = inv * dir;
    T basis[16], grad[16][3];
    sh_basis<T>(degree, u.x, u.y, u.z, basis, grad);
    int K = (degree + 1) * (degree + 1);
    Vec3<T> v_u = {0, 0, 0};
    for (int k = 0; k < K; ++k) {
        T g = 0;  // dL / d basis_k
        for (int d = 0; d < D; ++d) {
            v_coeffs[k * D + d] += basis[k] * v_color[d];
            g += coeffs[k * D + d] * v_color[d];
        }
        v_u.x += g * grad[k][0];
        v_u.y += g * grad[k][1];
        v_u.z += g * grad[k][2];
    }
    // u = dir / |dir|  =>  v_dir = (v_u - (v_u . u) u) / |dir|
    T proj = dot(v_u, u);
    return inv * (v_u - proj * u);
}

}  // namespace gk
