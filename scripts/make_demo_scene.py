#!/usr/bin/env python
"""Makes the embedded demo scene (data/demo_scene): photos of a procedurally textured object rendered
with gsplat_kit's own rasteriser, plus the known cameras for checking (cameras_gt.json).

The object is a few hundred thousand small Gaussians on analytic surfaces (a box, a vase and a ball on
a ground square), coloured by "dead leaves" textures (overlapping discs of random colour at every
scale): plenty of corners and blobs at every scale, and nothing repeats, so SIFT matches are many and
unambiguous. Lambertian shading is baked into the colours. Views are rendered at 2x and averaged
down (anti-aliasing), on a ring around the object with the elevation going up and down.

    .venv/bin/python scripts/make_demo_scene.py [--out data/demo_scene] [--views 30] [--width 256]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def dead_leaves(size: int, rng: np.random.Generator, n: int = 5000, rmin: float = 7.0, rmax: float = 200.0,
                palette_shift: float = 0.0) -> np.ndarray:
    """[size, size, 3] float texture of overlapping discs with power-law radii (scale-invariant)."""
    img = np.full((size, size, 3), 0.5, np.float32)
    # radii ~ r^-3 between rmin and rmax (inverse CDF), drawn largest first so small ones stay on top
    u = rng.random(n)
    r = 1.0 / np.sqrt(u / rmin ** 2 + (1 - u) / rmax ** 2)
    r = np.sort(r)[::-1]
    cx, cy = rng.random(n) * size, rng.random(n) * size
    hue = (rng.random(n) + palette_shift) % 1.0
    sat, val = 0.35 + 0.65 * rng.random(n), 0.15 + 0.85 * rng.random(n)
    cols = _hsv_to_rgb(hue, sat, val)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for i in range(n):
        x0, x1 = int(max(cx[i] - r[i], 0)), int(min(cx[i] + r[i] + 1, size))
        y0, y1 = int(max(cy[i] - r[i], 0)), int(min(cy[i] + r[i] + 1, size))
        if x0 >= x1 or y0 >= y1:
            continue
        m = (xx[y0:y1, x0:x1] - cx[i]) ** 2 + (yy[y0:y1, x0:x1] - cy[i]) ** 2 <= r[i] ** 2
        img[y0:y1, x0:x1][m] = cols[i]
    return img


def _hsv_to_rgb(h, s, v):
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros((len(h), 3), np.float32)
    for k, (a, b, c) in enumerate(table):
        sel = i == k
        out[sel] = np.stack([a[sel], b[sel], c[sel]], 1)
    return out


def sample(tex: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    s = tex.shape[0]
    iu = np.clip((u % 1.0) * s, 0, s - 1).astype(int)
    iv = np.clip((v % 1.0) * s, 0, s - 1).astype(int)
    return tex[iv, iu]


def build_object(rng: np.random.Generator, spacing: float = 0.012):
    """Surface points, normals and colours of the scene (world z up, object around the origin)."""
    texs = [dead_leaves(1024, rng, palette_shift=k * 0.17) for k in range(4)]
    P, N, C = [], [], []

    def add(p, n, c):
        P.append(p), N.append(n), C.append(c)

    # ground: a 6 x 6 square at z = 0, a bit coarser than the objects
    gs = spacing * 1.4
    g = np.arange(-3, 3, gs)
    gx, gy = np.meshgrid(g, g)
    gx, gy = gx.ravel() + rng.random(gx.size) * gs * 0.5, gy.ravel() + rng.random(gy.size) * gs * 0.5
    add(np.stack([gx, gy, np.zeros_like(gx)], 1), np.tile([0, 0, 1.0], (gx.size, 1)),
        sample(texs[0], gx / 6 + 0.5, gy / 6 + 0.5))

    # box: 0.8 wide, 0.7 high, rotated 25 degrees about z, five faces (the bottom is hidden)
    a = math.radians(25)
    R = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    half = np.array([0.4, 0.4, 0.35])
    centre = np.array([0.55, -0.35, 0.35])
    t = np.arange(-1, 1, spacing / 0.4)
    s1, s2 = [m.ravel() for m in np.meshgrid(t, t)]
    for k, (axis, sign) in enumerate([(0, 1), (0, -1), (1, 1), (1, -1), (2, 1)]):
        others = [i for i in range(3) if i != axis]
        loc = np.zeros((s1.size, 3))
        loc[:, axis] = sign * half[axis]
        loc[:, others[0]] = s1 * half[others[0]]
        loc[:, others[1]] = s2 * half[others[1]]
        nrm = np.zeros(3)
        nrm[axis] = sign
        add(loc @ R.T + centre, np.tile(R @ nrm, (s1.size, 1)), sample(texs[1], s1 * 0.2 + k * 0.2, s2 * 0.2 + 0.5))

    # vase: a surface of revolution at (-0.55, 0.35), height 1.1
    vc = np.array([-0.55, 0.35, 0.0])
    hgt = 1.1
    zs = np.arange(0, hgt, spacing)
    prof = lambda z: 0.22 + 0.12 * np.sin(z / hgt * 2.2 * math.pi + 0.4) + 0.05 * z
    pts, nrms, uvs = [], [], []
    for z in zs:
        rr = prof(z)
        n_around = max(int(2 * math.pi * rr / spacing), 8)
        th = np.arange(n_around) / n_around * 2 * math.pi + rng.random() * 0.1
        dr = (prof(z + 1e-3) - prof(z - 1e-3)) / 2e-3
        pts.append(np.stack([vc[0] + rr * np.cos(th), vc[1] + rr * np.sin(th), np.full_like(th, z)], 1))
        nn = np.stack([np.cos(th), np.sin(th), np.full_like(th, -dr)], 1)
        nrms.append(nn / np.linalg.norm(nn, axis=1, keepdims=True))
        uvs.append(np.stack([th / (2 * math.pi), np.full_like(th, z / hgt * 0.45)], 1))
    uv = np.concatenate(uvs)
    add(np.concatenate(pts), np.concatenate(nrms), sample(texs[2], uv[:, 0], uv[:, 1]))

    # ball: radius 0.3 in front
    bc, br = np.array([0.15, 0.75, 0.3]), 0.3
    n_ball = int(4 * math.pi * br ** 2 / spacing ** 2)
    i = np.arange(n_ball) + 0.5
    phi, th = np.arccos(1 - 2 * i / n_ball), math.pi * (1 + 5 ** 0.5) * i  # Fibonacci sphere
    d = np.stack([np.cos(th) * np.sin(phi), np.sin(th) * np.sin(phi), np.cos(phi)], 1)
    add(bc + br * d, d, sample(texs[3], (th / (2 * math.pi)) % 1, phi / math.pi * 0.5))

    pts, nrm, col = (np.concatenate(x).astype(np.float32) for x in (P, N, C))
    light = np.array([0.4, -0.3, 0.87])
    light /= np.linalg.norm(light)
    shade = 0.35 + 0.65 * np.clip(nrm @ light, 0, 1)
    return pts, nrm, np.clip(col * shade[:, None], 0, 1).astype(np.float32), spacing


def ring_cameras(n: int, width: int, height: int, radius: float = 3.3, target=(0.0, 0.1, 0.35)):
    """n views on a ring, elevation 22..42 degrees up and down twice per turn; OpenCV w2c matrices."""
    f = 0.95 * width
    K = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]])
    target = np.asarray(target)
    cams = []
    for i in range(n):
        az = 2 * math.pi * i / n
        el = math.radians(32 + 10 * math.sin(2 * az))
        eye = target + radius * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        fwd = target - eye
        fwd /= np.linalg.norm(fwd)
        right = np.cross(fwd, [0, 0, 1.0])
        right /= np.linalg.norm(right)
        down = np.cross(fwd, right)
        R = np.stack([right, down, fwd])  # rows: camera x, y, z axes in world coordinates
        w2c = np.eye(4)
        w2c[:3, :3] = R
        w2c[:3, 3] = -R @ eye
        cams.append(w2c)
    return K, cams


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(ROOT, "data", "demo_scene"))
    p.add_argument("--views", type=int, default=30)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--height", type=int, default=192)
    p.add_argument("--supersample", type=int, default=2)
    p.add_argument("--seed", type=int, default=3)
    args = p.parse_args(argv)

    import torch
    from PIL import Image
    from tqdm import tqdm

    from gsplat_kit import rasterization

    rng = np.random.default_rng(args.seed)
    pts, nrm, col, spacing = build_object(rng)
    n = len(pts)
    print(f"{n} Gaussians", flush=True)
    # flat discs along the surface: tiny scale along the normal, a rotation taking z to the normal
    scales = np.tile([spacing * 0.75, spacing * 0.75, spacing * 0.08], (n, 1)).astype(np.float32)
    quats = _quats_z_to(nrm)
    K, w2cs = ring_cameras(args.views, args.width, args.height)
    ss = args.supersample
    Kss = K.copy()
    Kss[:2] *= ss
    os.makedirs(os.path.join(args.out, "images"), exist_ok=True)
    bg = torch.tensor([[0.62, 0.72, 0.85]])
    gt = {"convention": "OpenCV camera (x right, y down, z forward); world_to_camera is a 4x4 row-major "
                        "matrix; world z is up; K in pixels of the saved images",
          "width": args.width, "height": args.height, "K": K.tolist(), "frames": []}
    t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)
    means, q, s, o, c = t(pts), t(quats), t(scales), torch.full((n,), 0.98), t(col)
    for i, w2c in enumerate(tqdm(w2cs, desc="rendering")):
        with torch.no_grad():
            img, _, _ = rasterization(means, q, s, o, c, t(w2c)[None], t(Kss)[None], args.width * ss,
                                      args.height * ss, backgrounds=bg)
        im = img[0].clamp(0, 1).reshape(args.height, ss, args.width, ss, 3).mean((1, 3))
        name = f"view_{i:03d}.png"
        path = os.path.join(args.out, "images", name)
        tmp = path + ".tmp.png"
        # 256-colour palette PNGs (no dithering): ~3x smaller than RGB ones for these busy textures, so
        # the scene stays small in the repository; the palette image *is* the photo everyone uses
        pil = Image.fromarray((im.numpy() * 255 + 0.5).astype(np.uint8))
        pil.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(tmp, optimize=True)
        os.replace(tmp, path)
        gt["frames"].append({"file": f"images/{name}", "world_to_camera": w2c.tolist()})
    tmp = os.path.join(args.out, "cameras_gt.json.tmp")
    with open(tmp, "w") as fh:
        json.dump(gt, fh, indent=1)
    os.replace(tmp, os.path.join(args.out, "cameras_gt.json"))
    total = sum(os.path.getsize(os.path.join(args.out, "images", f)) for f in os.listdir(os.path.join(args.out, "images")))
    print(f"wrote {args.views} views ({args.width}x{args.height}, {total / 1e6:.2f} MB) to {args.out}")
    return 0


def _quats_z_to(n: np.ndarray) -> np.ndarray:
    """wxyz quaternions rotating +z onto each unit normal (the half-way vector construction)."""
    z = np.array([0, 0, 1.0])
    h = n + z
    bad = np.linalg.norm(h, axis=1) < 1e-6  # normal = -z: rotate 180 degrees about x
    h[bad] = [0, 1.0, 0]
    h /= np.linalg.norm(h, axis=1, keepdims=True)
    w = h @ z
    xyz = np.cross(z, h)
    q = np.concatenate([w[:, None], xyz], 1)
    q[bad] = [0, 1.0, 0, 0]
    return q.astype(np.float32)


if __name__ == "__main__":
    sys.exit(main())
