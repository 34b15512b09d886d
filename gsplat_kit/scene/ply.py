"""The standard 3D Gaussian Splatting .ply (the original implementation's layout), read and written.

Vertex properties, in order: x y z nx ny nz f_dc_0..2 f_rest_0..(3(K-1)-1) opacity scale_0..2 rot_0..3,
float32, binary little-endian. Values are stored as the original stores them: log-scales, opacity
logits, unnormalised quaternions (w, x, y, z), SH coefficients with f_rest channel-major (all of R's
coefficients, then G's, then B's). Files from other tools may order properties differently or add
more; reading goes by name.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from gsplat_kit.common.errors import UserError

_PLY_TYPES = {"float": "f4", "float32": "f4", "double": "f8", "float64": "f8", "uchar": "u1", "uint8": "u1",
              "char": "i1", "int8": "i1", "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
              "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4"}


class PlyError(UserError):
    """A .ply that is not a readable 3DGS file."""


def attribute_names(num_rest: int) -> list[str]:
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(num_rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def save_ply(path: str, splats: dict) -> None:
    """Writes splats (means, scales, quats, opacities, sh0 [N,1,3], shN [N,K-1,3]) atomically."""
    missing = [k for k in ("means", "scales", "quats", "opacities", "sh0") if k not in splats]
    if missing:
        raise ValueError(f"save_ply({path}): splats lack {missing}")
    t = {k: (v.detach().cpu().float().numpy() if torch.is_tensor(v) else np.asarray(v, np.float32)) for k, v in splats.items()}
    n = t["means"].shape[0]
    shN = t.get("shN", np.zeros((n, 0, 3), np.float32))
    want = {"means": (n, 3), "scales": (n, 3), "quats": (n, 4), "opacities": (n,), "sh0": (n, 1, 3)}
    bad = {k: tuple(t[k].shape) for k, shp in want.items() if tuple(t[k].shape) != shp and t[k].size != np.prod(shp)}
    if bad or shN.ndim != 3 or shN.shape[0] != n or shN.shape[2] != 3 or int(round((shN.shape[1] + 1) ** 0.5)) ** 2 != shN.shape[1] + 1:
        raise ValueError(f"save_ply({path}): bad shapes {bad or {'shN': tuple(shN.shape)}} for {n} Gaussians "
                         f"(means [N,3], scales [N,3], quats [N,4], opacities [N], sh0 [N,1,3], shN [N,(d+1)^2-1,3])")
    sh0 = t["sh0"].reshape(n, 3)
    rest = shN.transpose(0, 2, 1).reshape(n, -1)  # channel-major, as the original
    cols = [t["means"], np.zeros((n, 3), np.float32), sh0, rest, t["opacities"].reshape(n, 1), t["scales"], t["quats"]]
    data = np.concatenate([np.asarray(c, "<f4") for c in cols], 1)
    names = attribute_names(rest.shape[1])
    header = "ply\nformat binary_little_endian 1.0\nelement vertex {}\n{}end_header\n".format(
        n, "".join(f"property float {a}\n" for a in names))
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(memoryview(np.ascontiguousarray(data)).cast("B"))
    os.replace(tmp, path)


def _read_header(f, path):
    first = f.readline()
    if first.strip() != b"ply":
        raise PlyError(f"{path}: not a PLY file (first line {first[:20]!r})")
    fmt, elements, current = None, [], None
    while True:
        line = f.readline()
        if not line:
            raise PlyError(f"{path}: truncated header (no end_header)")
        parts = line.decode("ascii", "replace").split()
        if not parts:
            continue
        if parts[0] == "format":
            fmt = parts[1]
        elif parts[0] == "element":
            if len(parts) != 3 or not parts[2].isdigit():
                raise PlyError(f"{path}: malformed header line {' '.join(parts)[:60]!r}")
            current = [parts[1], int(parts[2]), []]
            elements.append(current)
        elif parts[0] == "property":
            if current is None:
                raise PlyError(f"{path}: property before any element")
            if len(parts) < 3:
                raise PlyError(f"{path}: malformed header line {' '.join(parts)[:60]!r}")
            if parts[1] == "list":  # (faces of a mesh): fine after the vertices, which is all we read
                current[2].append((parts[-1], "list"))
                continue
            if parts[1] not in _PLY_TYPES:
                raise PlyError(f"{path}: unknown property type {parts[1]!r}")
            current[2].append((parts[2], _PLY_TYPES[parts[1]]))
        elif parts[0] == "end_header":
            return fmt, elements


def load_ply(path: str) -> dict:
    """Reads a 3DGS .ply into float32 tensors: means, scales (log), quats, opacities (logit), sh0, shN."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as f:
        fmt, elements = _read_header(f, path)
        if fmt not in ("binary_little_endian", "binary_big_endian", "ascii"):
            raise PlyError(f"{path}: format {fmt!r} is not supported (3DGS files are binary_little_endian)")
        vertex = None
        for name, count, props in elements:
            if any(t == "list" for _, t in props):
                if name == "vertex":
                    raise PlyError(f"{path}: list property in the vertex element: not a 3DGS point cloud")
                raise PlyError(f"{path}: element {name!r} with a list property comes before the vertices")
            dtype = np.dtype([(p, ("<" if fmt != "binary_big_endian" else ">") + t) for p, t in props])
            if fmt == "ascii":
                rows = _read_ascii(f, path, name, count, len(props))
                if name == "vertex":
                    vertex = np.zeros(count, dtype)
                    for i, (p, _) in enumerate(props):
                        vertex[p] = rows[:, i]
                    break
                continue
            raw = f.read(dtype.itemsize * count)
            if len(raw) < dtype.itemsize * count:
                raise PlyError(f"{path}: truncated: element {name!r} needs {dtype.itemsize * count} bytes, "
                               f"the file has {len(raw)} left")
            if name == "vertex":
                vertex = np.frombuffer(raw, dtype, count)
                break
    if vertex is None:
        raise PlyError(f"{path}: no vertex element")
    names = vertex.dtype.names
    need = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
            "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [a for a in need if a not in names]
    if missing:
        raise PlyError(f"{path}: not a 3D Gaussian Splatting file: missing vertex properties {missing}")
    n_rest = sum(1 for a in names if a.startswith("f_rest_"))
    if any(f"f_rest_{i}" not in names for i in range(n_rest)):
        raise PlyError(f"{path}: f_rest properties are not numbered 0..{n_rest - 1}")
    if n_rest % 3 or int(round((n_rest // 3 + 1) ** 0.5)) ** 2 != n_rest // 3 + 1:
        raise PlyError(f"{path}: {n_rest} f_rest properties do not make a whole SH degree (expected 0, 9, 24 or 45)")
    col = lambda a: vertex[a].astype(np.float32)
    if all(vertex.dtype[a] == np.dtype("<f4") for a in names):
        # the usual case (all little-endian float32): one [N, props] view and column gathers, no per-column copies
        table = vertex.view("<f4").reshape(len(vertex), len(names))
        index = {a: i for i, a in enumerate(names)}
        stack = lambda attrs: table[:, [index[a] for a in attrs]]
    else:
        stack = lambda attrs: np.stack([col(a) for a in attrs], 1)
    n = len(vertex)
    rest = stack([f"f_rest_{i}" for i in range(n_rest)]) if n_rest else np.zeros((n, 0), np.float32)
    out = {
        "means": stack(["x", "y", "z"]),
        "scales": stack(["scale_0", "scale_1", "scale_2"]),
        "quats": stack(["rot_0", "rot_1", "rot_2", "rot_3"]),
        "opacities": col("opacity"),
        "sh0": stack(["f_dc_0", "f_dc_1", "f_dc_2"]).reshape(n, 1, 3),
        "shN": rest.reshape(n, 3, n_rest // 3).transpose(0, 2, 1).copy(),
    }
    for k, v in out.items():
        if not np.isfinite(v).all():
            raise PlyError(f"{path}: {k} holds NaN or inf values")
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}


def _read_ascii(f, path, name, count, nprops) -> np.ndarray:
    rows = []
    for i in range(count):
        line = f.readline()
        if not line:
            raise PlyError(f"{path}: truncated: element {name!r} has {i} of {count} rows")
        try:
            vals = [float(v) for v in line.split()]
        except ValueError:
            raise PlyError(f"{path}: malformed ASCII row {i} of element {name!r}") from None
        if len(vals) != nprops:
            raise PlyError(f"{path}: ASCII row {i} of element {name!r} has {len(vals)} values, expected {nprops}")
        rows.append(vals)
    return np.array(rows, np.float64).reshape(count, nprops)


def sh_degree_of(splats: dict) -> int:
    """The SH degree the coefficients of a splat dict allow."""
    return int(round((splats["shN"].shape[1] + 1) ** 0.5)) - 1
