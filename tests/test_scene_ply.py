"""The standard 3DGS .ply: exact round trip, the original attribute names/order/layout, files written by
other tools (other property order, extra properties, lower SH degree), and clear errors for bad files."""
import os

import numpy as np
import pytest
import torch

from gsplat_kit.scene import PlyError, load_ply, save_ply, sh_degree_of
from gsplat_kit.scene.ply import attribute_names


def _splats(n=257, degree=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    return {
        "means": torch.randn(n, 3, generator=g) * 3,
        "scales": torch.randn(n, 3, generator=g) - 4,
        "quats": torch.randn(n, 4, generator=g),
        "opacities": torch.randn(n, generator=g) * 2,
        "sh0": torch.randn(n, 1, 3, generator=g),
        "shN": torch.randn(n, k - 1, 3, generator=g) * 0.1,
    }


def _header(path):
    with open(path, "rb") as f:
        data = f.read()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    return data[:end].decode("ascii").splitlines(), data[end:]


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_round_trip_is_exact(degree, tmp_path):
    s = _splats(degree=degree)
    p = str(tmp_path / "pc.ply")
    save_ply(p, s)
    t = load_ply(p)
    assert set(t) == set(s)
    for k in s:
        assert t[k].dtype == torch.float32 and t[k].shape == s[k].shape, k
        assert torch.equal(t[k], s[k]), k
    assert sh_degree_of(t) == degree
    assert os.listdir(tmp_path) == ["pc.ply"]  # atomic write: no temp file left


def test_attribute_names_order_and_layout(tmp_path):
    s = _splats(n=5)
    p = str(tmp_path / "pc.ply")
    save_ply(p, s)
    lines, body = _header(p)
    assert lines[:3] == ["ply", "format binary_little_endian 1.0", "element vertex 5"]
    props = [l.split() for l in lines[3:-1]]
    assert all(t == "float" for _, t, _ in props)
    names = [n for _, _, n in props]
    expected = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(45)]
                + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    assert names == expected == attribute_names(45)
    assert lines[-1] == "end_header" and len(body) == 5 * 62 * 4
    rows = np.frombuffer(body, "<f4").reshape(5, 62)
    np.testing.assert_array_equal(rows[:, 0:3], s["means"].numpy())
    np.testing.assert_array_equal(rows[:, 3:6], 0)  # normals unused, zero as the original writes them
    np.testing.assert_array_equal(rows[:, 6:9], s["sh0"][:, 0].numpy())
    # f_rest channel-major as the original: the 15 R coefficients, then 15 G, then 15 B
    shN = s["shN"].numpy()
    np.testing.assert_array_equal(rows[:, 9:24], shN[:, :, 0])
    np.testing.assert_array_equal(rows[:, 24:39], shN[:, :, 1])
    np.testing.assert_array_equal(rows[:, 39:54], shN[:, :, 2])
    np.testing.assert_array_equal(rows[:, 54], s["opacities"].numpy())
    np.testing.assert_array_equal(rows[:, 55:58], s["scales"].numpy())
    np.testing.assert_array_equal(rows[:, 58:62], s["quats"].numpy())


def _write_custom(path, cols: dict, fmt="binary_little_endian", types=None, extra_element=False):
    n = len(next(iter(cols.values())))
    types = types or {}
    dt = np.dtype([(k, ("<" if "little" in fmt else ">") + types.get(k, "f4")) for k in cols])
    arr = np.zeros(n, dt)
    for k, v in cols.items():
        arr[k] = v
    tname = {"f4": "float", "f8": "double", "u1": "uchar", "i4": "int"}
    head = "ply\nformat %s 1.0\ncomment written by another tool\nelement vertex %d\n" % (fmt, n)
    head += "".join(f"property {tname[types.get(k, 'f4')]} {k}\n" for k in cols)
    if extra_element:
        head += "element face 0\nproperty list uchar int vertex_indices\n"
    head += "end_header\n"
    with open(path, "wb") as f:
        f.write(head.encode() + arr.tobytes())


def test_reads_other_tools_files_any_order_extra_properties_lower_degree(tmp_path):
    s = _splats(n=50, degree=1)
    names = attribute_names(9)
    table = torch.cat([s["means"], torch.zeros(50, 3), s["sh0"][:, 0], s["shN"].transpose(1, 2).reshape(50, -1),
                            s["opacities"][:, None], s["scales"], s["quats"]], 1).numpy()
    cols = {n: table[:, i] for i, n in enumerate(names)}
    cols = dict(reversed(list(cols.items())))  # any property order
    cols["red"] = np.arange(50) % 256  # extra properties (e.g. SuperSplat's colours) are ignored
    cols["filter_3D"] = np.ones(50)
    p = str(tmp_path / "other.ply")
    _write_custom(p, cols, types={"red": "u1", "x": "f8"})
    t = load_ply(p)
    assert sh_degree_of(t) == 1 and t["shN"].shape == (50, 3, 3)
    for k in s:
        torch.testing.assert_close(t[k], s[k], rtol=0, atol=0)
    # big-endian files too
    _write_custom(p, cols, fmt="binary_big_endian", types={"red": "u1"})
    torch.testing.assert_close(load_ply(p)["shN"], s["shN"], rtol=0, atol=0)


def test_bad_files_name_the_file(tmp_path):
    p = str(tmp_path / "pc.ply")
    save_ply(p, _splats(n=20))
    data = open(p, "rb").read()

    def check(content, pattern, exc=PlyError):
        q = str(tmp_path / "bad.ply")
        with open(q, "wb") as f:
            f.write(content)
        with pytest.raises(exc, match=pattern) as ei:
            load_ply(q)
        assert "bad.ply" in str(ei.value)

    check(data[:-7], r"truncated")
    check(data[:data.index(b"property float opacity")], r"truncated header")
    check(data.replace(b"element vertex 20", b"element vertex twenty"), r"malformed header line 'element vertex twenty'")
    check(b"PK\x03\x04 not a ply at all", r"not a PLY file")
    check(data.replace(b"binary_little_endian", b"ascii"), r"malformed ASCII row 0|ASCII row 0 .* values")
    check(data.replace(b"binary_little_endian", b"binary_middle_endian"), r"format 'binary_middle_endian'")
    check(data.replace(b"property float opacity\n", b"property float opacitx\n"), r"missing vertex properties \['opacity'\]")
    check(data.replace(b"property float f_rest_44\n", b"property float junk_44\n"), r"44 f_rest properties")
    bad = bytearray(data)
    bad[-4:] = np.array([np.nan], "<f4").tobytes()
    check(bytes(bad), r"NaN or inf")
    check(data.replace(b"property float f_rest_3\n", b"property float f_rest_99\n"), r"not numbered 0\.\.44")
    with pytest.raises(FileNotFoundError, match="nowhere.ply"):
        load_ply(str(tmp_path / "nowhere.ply"))


def test_ascii_files_from_other_tools(tmp_path):
    """A few tools write ASCII PLY; accept it when it carries the 3DGS properties."""
    s = _splats(n=4, degree=0)
    names = attribute_names(0)
    table = torch.cat([s["means"], torch.zeros(4, 3), s["sh0"][:, 0], s["opacities"][:, None], s["scales"],
                            s["quats"]], 1).numpy()
    p = tmp_path / "a.ply"
    body = "\n".join(" ".join(repr(float(v)) for v in row) for row in table)
    p.write_text("ply\nformat ascii 1.0\nelement vertex 4\n" + "".join(f"property float {n}\n" for n in names)
                 + "end_header\n" + body + "\n")
    t = load_ply(str(p))
    for k in s:
        torch.testing.assert_close(t[k], s[k], rtol=0, atol=0)


def test_save_rejects_bad_shapes(tmp_path):
    s = _splats(n=6)
    s["quats"] = s["quats"][:, :3]
    with pytest.raises(ValueError, match=r"out\.ply.*quats"):
        save_ply(str(tmp_path / "out.ply"), s)
    s = _splats(n=6)
    s["shN"] = s["shN"][:, :7]
    with pytest.raises(ValueError, match=r"shN"):
        save_ply(str(tmp_path / "out.ply"), s)
    del s["sh0"]
    with pytest.raises(ValueError, match=r"lack \['sh0'\]"):
        save_ply(str(tmp_path / "out.ply"), s)
    assert not os.listdir(tmp_path)


def test_reads_and_writes_through_plyfile(tmp_path, monkeypatch):
    """plyfile does the PLY work (the design's library); a mesh's face list after the vertices is fine."""
    import plyfile

    calls = []
    for name in ("read", "write"):
        orig = getattr(plyfile.PlyData, name)
        monkeypatch.setattr(plyfile.PlyData, name,
                            (lambda o, n: (lambda *a, **k: (calls.append(n), o(*a, **k))[1]))(orig, name))
    s = _splats(n=9, degree=2)
    p = str(tmp_path / "pc.ply")
    save_ply(p, s)
    assert load_ply(p)["shN"].shape == (9, 8, 3)
    assert calls == ["write", "read"]
    names = attribute_names(24)
    table = torch.cat([s["means"], torch.zeros(9, 3), s["sh0"][:, 0], s["shN"].transpose(1, 2).reshape(9, -1),
                       s["opacities"][:, None], s["scales"], s["quats"]], 1).numpy()
    q = str(tmp_path / "mesh.ply")
    _write_custom(q, {n: table[:, i] for i, n in enumerate(names)}, extra_element=True)
    torch.testing.assert_close(load_ply(q)["quats"], s["quats"], rtol=0, atol=0)
