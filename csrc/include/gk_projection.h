// Projection of one 3D Gaussian into one pinhole camera (EWA splatting), and its vector-Jacobian
// product. Shared verbatim by csrc/splat/projection_cpu.cpp and csrc/splat/projection.cu.
//
// Conventions: quaternions (w, x, y, z), any norm; 3D covariances as 6 upper-triangle values
// (xx, xy, xz, yy, yz, zz); conics as 3 upper-triangle values (a, b, c) of the inverse 2D covariance,
// so that sigma = 0.5 (a dx^2 + c dy^2) + b dx dy. Matrix gradients are kept as full (possibly
// non-symmetric) matrices so that every VJP below is the plain chain rule.
#pragma once

#include "gk_common.h"

namespace gk {

// ---- quaternion and scale -> 3D covariance (3DGS eq. 6: Sigma = R S S^T R^T) -----------------------

template <typename T> GK_HD Mat3<T> quat_to_rotmat(const T q_raw[4], T qn[4]) {
    T inv = T(1) / sqrt(q_raw[0] * q_raw[0] + q_raw[1] * q_raw[1] + q_raw[2] * q_raw[2] + q_raw[3] * q_raw[3]);
    T w = q_raw[0] * inv, x = q_raw[1] * inv, y = q_raw[2] * inv, z = q_raw[3] * inv;
    qn[0] = w, qn[1] = x, qn[2] = y, qn[3] = z;
    Mat3<T> R;
    R.m[0][0] = 1 - 2 * (y * y + z * z); R.m[0][1] = 2 * (x * y - w * z);     R.m[0][2] = 2 * (x * z + w * y);
    R.m[1][0] = 2 * (x * y + w * z);     R.m[1][1] = 1 - 2 * (x * x + z * z); R.m[1][2] = 2 * (y * z - w * x);
    R.m[2][0] = 2 * (x * z - w * y);     R.m[2][1] = 2 * (y * z + w * x);     R.m[2][2] = 1 - 2 * (x * x + y * y);
    return R;
}

// v_q_raw from v_R, through R(q / |q|).
template <typename T> GK_HD void quat_to_rotmat_vjp(const T q_raw[4], const T qn[4], const Mat3<T>& V, T v_q_raw[4]) {
    T w = qn[0], x = qn[1], y = qn[2], z = qn[3];
    const auto& v = V.m;
    T vw = 2 * (-z * v[0][1] + y * v[0][2] + z * v[1][0] - x * v[1][2] - y * v[2][0] + x * v[2][1]);
    T vx = 2 * (y * v[0][1] + z * v[0][2] + y * v[1][0] - 2 * x * v[1][1] - w * v[1][2] + z * v[2][0] + w * v[2][1] - 2 * x * v[2][2]);
    T vy = 2 * (-2 * y * v[0][0] + x * v[0][1] + w * v[0][2] + x * v[1][0] + z * v[1][2] - w * v[2][0] + z * v[2][1] - 2 * y * v[2][2]);
    T vz = 2 * (-2 * z * v[0][0] - w * v[0][1] + x * v[0][2] + w * v[1][0] - 2 * z * v[1][1] + y * v[1][2] + x * v[2][0] + y * v[2][1]);
    // d(q/|q|)/dq = (I - qn qn^T) / |q|
    T inv = T(1) / sqrt(q_raw[0] * q_raw[0] + q_raw[1] * q_raw[1] + q_raw[2] * q_raw[2] + q_raw[3] * q_raw[3]);
    T proj = vw * w + vx * x + vy * y + vz * z;
    v_q_raw[0] = (vw - proj * w) * inv;
    v_q_raw[1] = (vx - proj * x) * inv;
    v_q_raw[2] = (vy - proj * y) * inv;
    v_q_raw[3] = (vz - proj * z) * inv;
}

template <typename T> GK_HD Mat3<T> quat_scale_to_covar(const T q_raw[4], const T s[3], Mat3<T>& R, T qn[4]) {
    R = quat_to_rotmat(q_raw, qn);
    Mat3<T> M;  // M = R S
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) M.m[i][j] = R.m[i][j] * s[j];
    return matmul(M, transpose(M));
}

// Given v_Sigma (full), accumulates v_q_raw and v_s.
template <typename T> GK_HD void quat_scale_to_covar_vjp(const T q_raw[4], const T s[3], const Mat3<T>& v_cov, T v_q_raw[4], T v_s[3]) {
    T qn[4];
    Mat3<T> R = quat_to_rotmat(q_raw, qn);
    Mat3<T> M;
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) M.m[i][j] = R.m[i][j] * s[j];
    // Sigma = M M^T  =>  v_M = (G + G^T) M
    Mat3<T> Gs;
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) Gs.m[i][j] = v_cov.m[i][j] + v_cov.m[j][i];
    Mat3<T> v_M = matmul(Gs, M);
    Mat3<T> v_R;
    for (int j = 0; j < 3; ++j) {
        v_s[j] = v_M.m[0][j] * R.m[0][j] + v_M.m[1][j] * R.m[1][j] + v_M.m[2][j] * R.m[2][j];
        for (int i = 0; i < 3; ++i) v_R.m[i][j] = v_M.m[i][j] * s[j];
    }
    quat_to_rotmat_vjp(q_raw, qn, v_R, v_q_raw);
}

template <typename T> GK_HD Mat3<T> covar_from_upper(const T c[6]) {
    Mat3<T> S;
    S.m[0][0] = c[0]; S.m[0][1] = c[1]; S.m[0][2] = c[2];
    S.m[1][0] = c[1]; S.m[1][1] = c[3]; S.m[1][2] = c[4];
    S.m[2][0] = c[2]; S.m[2][1] = c[4]; S.m[2][2] = c[5];
    return S;
}
template <typename T> GK_HD void covar_from_upper_vjp(const Mat3<T>& G, T v_c[6]) {
    v_c[0] = G.m[0][0];
    v_c[1] = G.m[0][1] + G.m[1][0];
    v_c[2] = G.m[0][2] + G.m[2][0];
    v_c[3] = G.m[1][1];
    v_c[4] = G.m[1][2] + G.m[2][1];
    v_c[5] = G.m[2][2];
}

// ---- perspective projection with the EWA Jacobian (Zwicker et al. 2001; 3DGS eq. 5) ----------------

template <typename T> struct Camera {
    T fx, fy, cx, cy;
    int width, height;
    // 3DGS clamps the direction used in the Jacobian to 1.3x the field of view, so that splats far
    // outside the image do not blow up.
    GK_HD T lim_x_pos() const { return (T(width) - cx) / fx + T(0.3) * (T(0.5) * T(width) / fx); }
    GK_HD T lim_x_neg() const { return cx / fx + T(0.3) * (T(0.5) * T(width) / fx); }
    GK_HD T lim_y_pos() const { return (T(height) - cy) / fy + T(0.3) * (T(0.5) * T(height) / fy); }
    GK_HD T lim_y_neg() const { return cy / fy + T(0.3) * (T(0.5) * T(height) / fy); }
};

template <typename T> GK_HD Camera<T> load_camera(const T* K, int width, int height) {
    return {K[0], K[4], K[2], K[5], width, height};
}

// Jacobian of the perspective map at camera-space p, with the clamped direction.
template <typename T> GK_HD void persp_jacobian(const Camera<T>& cam, Vec3<T> p, T J[2][3], bool& clamp_x, bool& clamp_y, T& tx, T& ty) {
    T rx = p.x / p.z, ry = p.y / p.z;
    T cx_ = gk_min(cam.lim_x_pos(), gk_max(-cam.lim_x_neg(), rx));
    T cy_ = gk_min(cam.lim_y_pos(), gk_max(-cam.lim_y_neg(), ry));
    clamp_x = cx_ != rx;
    clamp_y = cy_ != ry;
    tx = p.z * cx_;
    ty = p.z * cy_;
    T rz = T(1) / p.z, rz2 = rz * rz;
    J[0][0] = cam.fx * rz; J[0][1] = 0; J[0][2] = -cam.fx * tx * rz2;
    J[1][0] = 0; J[1][1] = cam.fy * rz; J[1][2] = -cam.fy * ty * rz2;
}

// cov2d = J cov_c J^T
template <typename T> GK_HD Mat2<T> project_covar(const T J[2][3], const Mat3<T>& cov_c) {
    T JC[2][3];
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 3; ++j) JC[i][j] = J[i][0] * cov_c.m[0][j] + J[i][1] * cov_c.m[1][j] + J[i][2] * cov_c.m[2][j];
    Mat2<T> r;
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j) r.m[i][j] = JC[i][0] * J[j][0] + JC[i][1] * J[j][1] + JC[i][2] * J[j][2];
    return r;
}

// ---- one Gaussian, one camera: forward -------------------------------------------------------------

template <typename T> struct Projected {
    bool valid;
    int32_t radius[2];
    T mean2d[2];
    T depth;
    T conic[3];
    T compensation;
};

// Everything the projection needs about one Gaussian in world space, already as a covariance.
template <typename T> GK_HD Projected<T> project_gaussian(Vec3<T> mean, const Mat3<T>& cov, const Mat3<T>& R, Vec3<T> t,
                                                          const Camera<T>& cam, T eps2d, T near_plane, T far_plane,
                                                          T radius_clip) {
    Projected<T> out;
    out.valid = false;
    out.radius[0] = out.radius[1] = 0;
    out.mean2d[0] = out.mean2d[1] = 0;
    out.depth = 0;
    out.conic[0] = out.conic[1] = out.conic[2] = 0;
    out.compensation = 0;
    Vec3<T> p = matvec(R, mean) + t;
    if (!(p.z >= near_plane && p.z <= far_plane)) return out;  // also rejects NaN depths
    Mat3<T> cov_c = matmul(matmul(R, cov), transpose(R));
    T J[2][3];
    bool clx, cly;
    T tx, ty;
    persp_jacobian(cam, p, J, clx, cly, tx, ty);
    Mat2<T> c2 = project_covar(J, cov_c);
    T det_orig = c2.m[0][0] * c2.m[1][1] - c2.m[0][1] * c2.m[1][0];
    c2.m[0][0] += eps2d;  // low-pass dilation: every splat covers at least ~a pixel
    c2.m[1][1] += eps2d;
    T det = c2.m[0][0] * c2.m[1][1] - c2.m[0][1] * c2.m[1][0];
    if (!(det > 0)) return out;
    T a = c2.m[0][0], b = c2.m[0][1], c = c2.m[1][1];
    T rx = ceil(T(kSigmaExtent) * sqrt(a));
    T ry = ceil(T(kSigmaExtent) * sqrt(c));
    if (!(rx > radius_clip || ry > radius_clip)) return out;
    T mx = cam.fx * p.x / p.z + cam.cx;
    T my = cam.fy * p.y / p.z + cam.cy;
    if (!(mx + rx > 0 && mx - rx < T(cam.width) && my + ry > 0 && my - ry < T(cam.height))) return out;
    out.valid = true;
    out.radius[0] = int32_t(rx);
    out.radius[1] = int32_t(ry);
    out.mean2d[0] = mx;
    out.mean2d[1] = my;
    out.depth = p.z;
    out.conic[0] = c / det;
    out.conic[1] = -b / det;
    out.conic[2] = a / det;
    // Mip-Splatting's compensation keeps the splat's integral when the dilation widens it.
    T r = det_orig / det;
    out.compensation = sqrt(r > 0 ? r : T(0));
    return out;
}

// The world-space covariance of Gaussian n: given directly ([N,6] upper triangle) or from q and s.
template <typename T> GK_HD Mat3<T> world_covariance(int64_t n, const T* covars, const T* quats, const T* scales) {
    if (covars) return covar_from_upper(covars + n * 6);
    Mat3<T> R;
    T qn[4];
    return quat_scale_to_covar(quats + n * 4, scales + n * 3, R, qn);
}

// Writes one projection result into the [C*N, ...] output arrays at row i.
template <typename T> GK_HD void store_projected(const Projected<T>& p, int64_t i, int32_t* radii, T* means2d, T* depths,
                                                 T* conics, T* comps) {
    radii[i * 2] = p.radius[0];
    radii[i * 2 + 1] = p.radius[1];
    means2d[i * 2] = p.mean2d[0];
    means2d[i * 2 + 1] = p.mean2d[1];
    depths[i] = p.depth;
    conics[i * 3] = p.conic[0];
    conics[i * 3 + 1] = p.conic[1];
    conics[i * 3 + 2] = p.conic[2];
    comps[i] = p.compensation;
}

// ---- one Gaussian, one camera: vector-Jacobian product ---------------------------------------------
// Given the upstream gradients of mean2d, depth, conic and compensation, returns the gradients of the
// camera-space covariance's world-space source: v_mean (world) and v_cov (world, full 3x3).

template <typename T> GK_HD void project_gaussian_vjp(Vec3<T> mean, const Mat3<T>& cov, const Mat3<T>& R, Vec3<T> t,
                                                      const Camera<T>& cam, T eps2d, const T v_mean2d[2], T v_depth,
                                                      const T v_conic[3], T v_comp, Vec3<T>& v_mean, Mat3<T>& v_cov) {
    Vec3<T> p = matvec(R, mean) + t;
    Mat3<T> cov_c = matmul(matmul(R, cov), transpose(R));
    T J[2][3];
    bool clx, cly;
    T tx, ty;
    persp_jacobian(cam, p, J, clx, cly, tx, ty);
    Mat2<T> B = project_covar(J, cov_c);
    B.m[0][0] += eps2d;
    B.m[1][1] += eps2d;
    T det = B.m[0][0] * B.m[1][1] - B.m[0][1] * B.m[1][0];
    // conic = B^{-1}; stored (a, b, c) are (C00, C01, C11): dL/dC is [[va, vb], [0, vc]].
    T Ci[2][2] = {{B.m[1][1] / det, -B.m[0][1] / det}, {-B.m[1][0] / det, B.m[0][0] / det}};
    T vC[2][2] = {{v_conic[0], v_conic[1]}, {T(0), v_conic[2]}};
    // d(B^-1) = -B^-1 dB B^-1  =>  v_B = -C^T vC C^T
    T tmp[2][2], vB[2][2];
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j) tmp[i][j] = Ci[0][i] * vC[0][j] + Ci[1][i] * vC[1][j];  // C^T vC
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j) vB[i][j] = -(tmp[i][0] * Ci[j][0] + tmp[i][1] * Ci[j][1]);  // (C^T vC) C^T
    if (v_comp != T(0)) {
        // comp^2 = det(B - eps I) / det(B); d comp / dB = (1/(2 comp)) ((1 - comp^2) B^-1 - eps det(B^-1) I)
        T det_orig = (B.m[0][0] - eps2d) * (B.m[1][1] - eps2d) - B.m[0][1] * B.m[1][0];
        T r = det_orig / det;
        if (r > 0) {
            T comp = sqrt(r);
            T k = v_comp * T(0.5) / comp;
            T det_conic = Ci[0][0] * Ci[1][1] - Ci[0][1] * Ci[1][0];
            vB[0][0] += k * ((1 - r) * Ci[0][0] - eps2d * det_conic);
            vB[0][1] += k * ((1 - r) * Ci[1][0]);
            vB[1][0] += k * ((1 - r) * Ci[0][1]);
            vB[1][1] += k * ((1 - r) * Ci[1][1] - eps2d * det_conic);
        }
    }
    // B = J cov_c J^T + eps I:  v_cov_c = J^T vB J;  v_J = vB J cov_c^T + vB^T J cov_c
    Mat3<T> v_cov_c;
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) {
            T s = 0;
            for (int a = 0; a < 2; ++a)
                for (int b = 0; b < 2; ++b) s += J[a][i] * vB[a][b] * J[b][j];
            v_cov_c.m[i][j] = s;
        }
    T JC[2][3];  // J cov_c (cov_c symmetric, so J cov_c^T = J cov_c)
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 3; ++j) JC[i][j] = J[i][0] * cov_c.m[0][j] + J[i][1] * cov_c.m[1][j] + J[i][2] * cov_c.m[2][j];
    T vJ[2][3];
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 3; ++j) vJ[i][j] = (vB[i][0] + vB[0][i]) * JC[0][j] + (vB[i][1] + vB[1][i]) * JC[1][j];
    // mean2d = (fx x / z + cx, fy y / z + cy); depth = z
    T rz = T(1) / p.z, rz2 = rz * rz, rz3 = rz2 * rz;
    Vec3<T> v_p;
    v_p.x = cam.fx * rz * v_mean2d[0];
    v_p.y = cam.fy * rz * v_mean2d[1];
    v_p.z = -(cam.fx * p.x * v_mean2d[0] + cam.fy * p.y * v_mean2d[1]) * rz2 + v_depth;
    // J's entries depend on p: J00 = fx/z, J11 = fy/z, J02 = -fx tx / z^2, J12 = -fy ty / z^2, where
    // tx = x when unclamped (so dJ02/dx = -fx/z^2, dJ02/dz = 2 fx x / z^3), else tx = z * lim (dJ02/dz = fx tx / z^3).
    v_p.z += -cam.fx * rz2 * vJ[0][0] - cam.fy * rz2 * vJ[1][1];
    if (clx) {
        v_p.z += cam.fx * tx * rz3 * vJ[0][2];
    } else {
        v_p.x += -cam.fx * rz2 * vJ[0][2];
        v_p.z += 2 * cam.fx * tx * rz3 * vJ[0][2];
    }
    if (cly) {
        v_p.z += cam.fy * ty * rz3 * vJ[1][2];
    } else {
        v_p.y += -cam.fy * rz2 * vJ[1][2];
        v_p.z += 2 * cam.fy * ty * rz3 * vJ[1][2];
    }
    // p = R mean + t; cov_c = R cov R^T
    v_mean = matvec_t(R, v_p);
    v_cov = matmul(matmul(transpose(R), v_cov_c), R);
}

}  // namespace gk
