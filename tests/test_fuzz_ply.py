"""Fuzzing the PLY reader: mutated binary and ASCII 3DGS files (truncations at every section boundary,
random byte flips with a fixed seed, huge counts, NaN/Inf, malformed header lines, wrong types,
non-ASCII bytes). Every case must end in PlyError (or SplatLoadError through load_splats) naming the
file: never another exception type, never a hang (each case runs under a timer), never a write."""
import contextlib
import math
import os
import random
import re
import signal

import numpy as np
import pytest

from gsplat_kit.scene.ply import PlyError, attribute_names, load_ply
from gsplat_kit.scene.splats import SplatLoadError, load_splats

N, CASE_SECONDS = 12, 10


def _table(degree):
    rng = np.random.default_rng(0)
    rest = 3 * ((degree + 1) ** 2 - 1)
    names = attribute_names(rest)
    table = rng.normal(size=(N, len(names))).astype(np.float32)
    return names, table


def _binary_file():
    names, table = _table(3)
    head = "ply\nformat binary_little_endian 1.0\nelement vertex %d\n%send_header\n" % (
        N, "".join(f"property float {a}\n" for a in names))
    return head.encode("ascii"), table.astype("<f4").tobytes(), len(names)


def _ascii_file():
    names, table = _table(1)
    head = "ply\nformat ascii 1.0\nelement vertex %d\n%send_header\n" % (N, "".join(f"property float {a}\n" for a in names))
    body = "".join(" ".join(repr(float(v)) for v in row) + "\n" for row in table)
    return head.encode("ascii"), body.encode("ascii"), len(names)


def _line_prefixes(head: bytes):
    """The header cut after each of its lines (and inside the first)."""
    ends = [i + 1 for i, b in enumerate(head) if b == ord("\n")]
    return {f"header_cut_after_line_{k}": head[:end] for k, end in enumerate(ends[:-1])} | {
        "empty_file": b"", "cut_inside_magic": head[:2], "cut_inside_end_header": head[:-4]}


def _edit(head: bytes, old: str, new: str) -> bytes:
    assert old.encode() in head, old
    return head.replace(old.encode(), new.encode(), 1)


def _header_cases(head: bytes, body: bytes, fmt: str) -> dict:
    cases = {name: prefix for name, prefix in _line_prefixes(head).items()}
    edits = {
        "format_line_with_nothing_after": (f"format {fmt} 1.0", "format"),
        "format_without_version": (f"format {fmt} 1.0", f"format {fmt}"),
        "format_version_2": (f"format {fmt} 1.0", f"format {fmt} 2.0"),
        "format_unknown": (f"format {fmt} 1.0", "format binary_middle_endian 1.0"),
        "count_not_a_number": (f"element vertex {N}", "element vertex twelve"),
        "count_negative": (f"element vertex {N}", "element vertex -3"),
        "count_10e12": (f"element vertex {N}", "element vertex 1000000000000"),
        "count_2e64": (f"element vertex {N}", "element vertex 18446744073709551616"),
        "element_without_count": (f"element vertex {N}", "element vertex"),
        "property_type_unknown": ("property float x\n", "property float128 x\n"),
        "property_type_string": ("property float y\n", "property string y\n"),
        "property_without_name": ("property float z\n", "property float\n"),
        "vertex_list_property": ("property float opacity\n", "property list uchar float opacity\n"),
        "duplicate_property": ("property float y\n", "property float x\n"),
        "missing_opacity": ("property float opacity\n", "property float opacitx\n"),
        "f_rest_gap": ("property float f_rest_2\n", "property float f_rest_99\n"),
        "property_before_element": (f"element vertex {N}\n", f"property float w\nelement vertex {N}\n"),
        "end_header_with_junk": ("end_header\n", "end_header junk\n"),
        "no_end_header": ("end_header\n", ""),
        "non_ascii_property_name": ("property float scale_0\n", "property float sc\u00e4le_0\n"),
        "non_ascii_byte_in_format": (f"format {fmt} 1.0", f"format {fmt}\u00ff 1.0"),
        "huge_face_element_after": ("end_header\n", "element face 1000000000000\nproperty list uchar int vertex_indices\n"
                                                   "end_header\n"),
        "empty_vertex_element": (f"element vertex {N}", "element vertex 0"),
    }
    for name, (old, new) in edits.items():
        cases[name] = _edit(head, old, new) + body
    cases["not_ply_magic"] = b"PLY\n" + head[4:] + body
    cases["zip_file"] = b"PK\x03\x04" + head[4:] + body
    return cases


def _binary_cases() -> dict:
    head, body, props = _binary_file()
    row = 4 * props
    cases = _header_cases(head, body, "binary_little_endian")
    # 300,000 rows of (empty) lists before the vertices: the file holds them, but plyfile would read them one by one
    faces = f"element face 300000\nproperty list uchar int vertex_indices\nelement vertex {N}"
    cases["many_list_rows_before_vertices"] = _edit(head, f"element vertex {N}", faces) + bytes(300000) + body
    for k in (0, 1, N // 2, N - 1):
        cases[f"body_cut_after_row_{k}"] = head + body[:k * row]
    cases["body_cut_mid_row"] = head + body[:row + row // 2]
    cases["body_one_byte_short"] = head + body[:-1]
    for name, value in (("nan", np.nan), ("inf", np.inf), ("minus_inf", -np.inf)):
        for col, what in ((0, "position"), (props - 5, "scale"), (20, "sh")):
            b = bytearray(body)
            b[(3 * props + col) * 4:(3 * props + col) * 4 + 4] = np.float32(value).tobytes()
            cases[f"{name}_{what}"] = head + bytes(b)
    # float64 values beyond float32: inf after conversion
    names, table = _table(0)
    head64 = ("ply\nformat binary_big_endian 1.0\nelement vertex %d\n%send_header\n" % (
        N, "".join(f"property double {a}\n" for a in names))).encode()
    t64 = table.astype(">f8")
    t64[4, 1] = 1e300
    cases["float64_overflows_float32"] = head64 + t64.tobytes()
    rng = random.Random(1234)
    for i in range(12):  # a header byte set to a random non-ASCII value
        b = bytearray(head)
        b[rng.randrange(4, len(head) - 1)] = rng.randrange(0x80, 0x100)
        cases[f"random_non_ascii_header_byte_{i}"] = bytes(b) + body
    used = [c for c in range(props) if c not in (3, 4, 5)]  # not the normals, which 3DGS files leave unused
    for i in range(12):  # a random float's exponent set to all ones (Inf or NaN)
        b = bytearray(body)
        at = 4 * (rng.randrange(N) * props + rng.choice(used))
        b[at + 3] |= 0x7F
        b[at + 2] |= 0x80
        cases[f"random_exponent_flip_{i}"] = head + bytes(b)
    return cases


def _ascii_cases() -> dict:
    head, body, props = _ascii_file()
    lines = body.split(b"\n")
    cases = _header_cases(head, body, "ascii")
    for k in (0, 1, N // 2, N - 1):
        cases[f"body_cut_after_row_{k}"] = head + b"\n".join(lines[:k]) + (b"\n" if k else b"")
    cases["body_cut_mid_row"] = head + lines[0] + b"\n" + lines[1][:len(lines[1]) // 2] + b"\n"
    row_edits = {
        "row_too_few_values": lambda l: l.rsplit(b" ", 1)[0],
        "row_extra_value": lambda l: l + b" 1.0",
        "row_word": lambda l: b"abc " + l.split(b" ", 1)[1],
        "row_nan": lambda l: b"nan " + l.split(b" ", 1)[1],
        "row_inf": lambda l: b"-inf " + l.split(b" ", 1)[1],
        "row_overflow": lambda l: b"1e999 " + l.split(b" ", 1)[1],
        "row_hex": lambda l: b"0x1F " + l.split(b" ", 1)[1],
        "row_empty": lambda l: b"",
        "row_non_ascii": lambda l: "\u00e9".encode() + l,
        "row_nul_byte": lambda l: l[:5] + b"\x00" + l[6:],
    }
    for name, edit in row_edits.items():
        cases[name] = head + b"\n".join(lines[:3] + [edit(lines[3])] + lines[4:])
    uchar = _edit(head, "property float nx\n", "property uchar nx\n")
    cases["uchar_value_300"] = uchar + b"\n".join([b" ".join([l.split(b" ")[0], b"300", *l.split(b" ")[2:]])
                                                   for l in lines[:-1]] + [b""])
    integer = _edit(head, "property float ny\n", "property int ny\n")
    cases["int_value_fraction"] = integer + body
    rng = random.Random(99)
    digits = [i for i, c in enumerate(body) if chr(c).isdigit()]
    for i in range(12):  # a random digit turned into a letter: the number cannot parse
        b = bytearray(body)
        b[rng.choice(digits)] = ord(rng.choice("gkqxz"))
        cases[f"random_digit_to_letter_{i}"] = head + bytes(b)
    for i in range(6):  # a random body byte turned into a non-ASCII one
        b = bytearray(body)
        b[rng.randrange(len(body))] = rng.randrange(0x80, 0x100)
        cases[f"random_non_ascii_body_byte_{i}"] = head + bytes(b)
    return cases


BINARY, ASCII = _binary_cases(), _ascii_cases()


class CaseTimeout(BaseException):
    """Not an Exception, so no reader's catch-all can turn a hang into a passing PlyError."""


@contextlib.contextmanager
def _time_limit(seconds):
    def fail(signum, frame):
        raise CaseTimeout(f"case ran over {seconds} s")

    old = signal.signal(signal.SIGALRM, fail)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _check(tmp_path, monkeypatch, name, content):
    folder = tmp_path / "cases"
    folder.mkdir()
    p = folder / f"{name}.ply"
    p.write_bytes(content)
    monkeypatch.chdir(tmp_path)  # a reader that wrote anything relative would write here
    before = sorted(os.listdir(tmp_path)), sorted(os.listdir(folder))
    with _time_limit(CASE_SECONDS):
        with pytest.raises((PlyError, SplatLoadError)) as ei:
            load_splats(p)
        assert f"{name}.ply" in str(ei.value)
        assert type(ei.value) in (PlyError, SplatLoadError)
        if type(ei.value) is PlyError:  # the PLY reader itself refuses it too
            with pytest.raises(PlyError, match=f"{name}.ply"):
                load_ply(str(p))
    assert (sorted(os.listdir(tmp_path)), sorted(os.listdir(folder))) == before
    return str(ei.value)


def test_the_unmutated_files_load(tmp_path):
    for maker, degree in ((_binary_file, 3), (_ascii_file, 1)):
        head, body, _ = maker()
        p = tmp_path / "good.ply"
        p.write_bytes(head + body)
        s = load_splats(p)
        assert s.num == N and s.sh_degree == degree


def test_enough_cases():
    assert len(BINARY) >= 20 and len(ASCII) >= 20


@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_ply_mutation_is_refused(tmp_path, monkeypatch, name):
    _check(tmp_path, monkeypatch, name, BINARY[name])


@pytest.mark.parametrize("name", sorted(ASCII))
def test_ascii_ply_mutation_is_refused(tmp_path, monkeypatch, name):
    _check(tmp_path, monkeypatch, name, ASCII[name])


def test_messages_say_what_is_wrong(tmp_path, monkeypatch):
    expect = {
        "format_line_with_nothing_after": r"malformed header line 'format'",
        "count_10e12": r"truncated: element 'vertex' claims 1000000000000 rows",
        "huge_face_element_after": r"element 'face' claims 1000000000000 rows",
        "non_ascii_property_name": r"non-ASCII byte in header line 59",
        "property_type_string": r"malformed header line 'property string y' \(field type 'string'\)$",
        "nan_position": r"means holds NaN or inf",
        "empty_vertex_element": r"no Gaussians",
        "vertex_list_property": r"list property in the vertex element",
        "many_list_rows_before_vertices": r"element 'face' has 300000 rows of list properties",
    }
    for i, (name, pattern) in enumerate(expect.items()):
        sub = tmp_path / str(i)
        sub.mkdir()
        msg = _check(sub, monkeypatch, name, BINARY[name])
        assert re.search(pattern, msg), (name, msg)


def test_random_header_flips_never_escape(tmp_path):
    """Any byte of the header set to any value (fixed seed): a PlyError/SplatLoadError or a valid load,
    never another exception."""
    head, body, _ = _binary_file()
    rng = random.Random(7)
    outcomes = {"refused": 0, "loaded": 0}
    for i in range(150):
        b = bytearray(head)
        b[rng.randrange(len(head))] = rng.randrange(256)
        p = tmp_path / f"flip_{i}.ply"
        p.write_bytes(bytes(b) + body)
        with _time_limit(CASE_SECONDS):
            try:
                s = load_splats(p)
            except (PlyError, SplatLoadError) as e:
                assert p.name in str(e)
                outcomes["refused"] += 1
            else:
                assert all(math.isfinite(float(v.abs().max())) for v in s.params.values() if v.numel())
                outcomes["loaded"] += 1
    assert outcomes["refused"] > 100, outcomes
