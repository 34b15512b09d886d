"""Fuzzing the teacher-weights reader (`synth.models.load_teacher`, used by synthesize, distill, prune and
the benchmark): every mutated file ends in the reader's own UserError-derived error naming the file (or,
for a byte flip the zip reader ignores, in exactly the original content), within a per-case time limit,
and nothing is ever executed or written."""
from __future__ import annotations

import faulthandler
import io
import os
import pickle
import random
import signal
import zipfile

import pytest
import torch

from gsplat_kit.common.errors import UserError
from gsplat_kit.common.safe_load import UnsafeFileError
from gsplat_kit.synth.models import build_model, load_teacher, save_teacher

CASE_SECONDS = 30
CLASSES = [f"c{i}" for i in range(10)]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz_teacher")
    torch.manual_seed(0)
    p = d / "base.pt"
    save_teacher(build_model("resnet20"), "resnet20", p, CLASSES, extra={"test_accuracy": 0.5})
    return p


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout(f"a case ran past {CASE_SECONDS} s")


@pytest.fixture(autouse=True)
def per_case_timeout():
    """SIGALRM interrupts Python code; faulthandler is the backstop for a hang inside C code."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_SECONDS)
    faulthandler.dump_traceback_later(CASE_SECONDS * 3, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _zip_members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def _rezip(members: dict[str, bytes], out) -> None:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for n, b in members.items():
            z.writestr(n, b)


def _payload(base) -> dict:
    return torch.load(base, weights_only=True)


def _save(obj, path):
    torch.save(obj, path)
    return path


def _expect_refused(path, error=UserError):
    with pytest.raises(error) as info:
        load_teacher(path)
    assert os.path.basename(str(path)) in str(info.value), str(info.value)
    assert "\n" not in str(info.value).strip()


# -- truncations ---------------------------------------------------------------------------------------
def _pkl_end(base) -> int:
    data = base.read_bytes()
    i = data.find(b"data.pkl")
    return i + 200 if i >= 0 else len(data) // 3


@pytest.mark.parametrize("where", ["empty", "1", "64", "512", "in_pickle", "half", "before_directory", "minus_1"])
def test_truncated(base, tmp_path, where):
    data = base.read_bytes()
    cut = {"empty": 0, "1": 1, "64": 64, "512": 512, "in_pickle": _pkl_end(base), "half": len(data) // 2,
           "before_directory": len(data) - 200, "minus_1": len(data) - 1}[where]
    p = tmp_path / f"trunc_{where}.pt"
    p.write_bytes(data[:cut])
    _expect_refused(p)


# -- byte flips (fixed seed) ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(12))
def test_byte_flips(base, tmp_path, seed):
    data = bytearray(base.read_bytes())
    rng = random.Random(1000 + seed)
    region = [(0, len(data)), (0, 2048), (len(data) - 1024, len(data))][seed % 3]   # anywhere, header, directory
    for _ in range(1 + seed % 4):
        pos = rng.randrange(*region)
        data[pos] ^= 1 << rng.randrange(8)
    p = tmp_path / f"flip_{seed}.pt"
    p.write_bytes(bytes(data))
    try:
        model, meta = load_teacher(p)
    except UserError as e:
        assert p.name in str(e)
        return
    # loaded: the flip hit bytes the zip reader ignores (alignment padding); the content must be intact
    ref, ref_meta = load_teacher(base)
    assert meta == ref_meta
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k


def test_flip_in_a_weight_is_caught_by_the_digest(base, tmp_path):
    payload = _payload(base)
    payload["state_dict"]["fc.weight"][0, 0] += 1e-3
    _expect_refused(_save(payload, tmp_path / "edited_weight.pt"))


# -- wrong types and values ----------------------------------------------------------------------------
def _variant(base, **changes):
    payload = _payload(base)
    payload.pop("sha256")        # hand-made files carry no digest; the checks below must still hold
    for k, v in changes.items():
        if v is _DROP:
            payload.pop(k)
        else:
            payload[k] = v
    return payload


_DROP = object()


@pytest.mark.parametrize("case", [
    "a_list", "a_string", "an_int", "dict_of_strings", "empty_dict", "state_dict_strings", "state_dict_list",
    "arch_int", "arch_unknown", "arch_missing", "classes_int", "classes_short", "classes_duplicate",
    "image_size_str", "image_size_huge", "num_classes_fc_mismatch", "missing_layer", "pruned_inconsistent",
    "digest_wrong"])
def test_wrong_types(base, tmp_path, case):
    sd = _payload(base)["state_dict"]
    obj = {
        "a_list": [1, 2, 3], "a_string": "weights", "an_int": 7, "dict_of_strings": {"a": "b"}, "empty_dict": {},
        "state_dict_strings": _variant(base, state_dict={"conv1.weight": "x"}),
        "state_dict_list": _variant(base, state_dict=[1, 2]),
        "arch_int": _variant(base, arch=20), "arch_unknown": _variant(base, arch="resnet999"),
        "arch_missing": _variant(base, arch=_DROP),
        "classes_int": _variant(base, classes=10), "classes_short": _variant(base, classes=["a", "b"]),
        "classes_duplicate": _variant(base, classes=["a"] * 10),
        "image_size_str": _variant(base, image_size="32"), "image_size_huge": _variant(base, image_size=10 ** 9),
        "num_classes_fc_mismatch": _variant(base, state_dict=dict(sd, **{"fc.weight": torch.zeros(7, 64)})),
        "missing_layer": _variant(base, state_dict={k: v for k, v in sd.items() if k != "conv1.weight"}),
        "pruned_inconsistent": _variant(base, pruned={"ratio": 0.5},
                                        state_dict=dict(sd, **{"stages.0.0.conv1.weight": torch.zeros(8, 16, 3, 3)})),
        "digest_wrong": dict(_payload(base), sha256="0" * 64),
    }[case]
    _expect_refused(_save(obj, tmp_path / f"{case}.pt"))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights(base, tmp_path, value):
    payload = _variant(base)
    payload["state_dict"]["stages.1.0.conv1.weight"][0, 0, 0, 0] = value
    _expect_refused(_save(payload, tmp_path / f"nonfinite_{value}.pt"))


@pytest.mark.parametrize("content", [b"", b"hello, not a checkpoint\n", b"\x89PNG\r\n\x1a\n" + b"\0" * 100,
                                     b"PK\x03\x04" + b"\0" * 60])
def test_not_a_torch_file(tmp_path, content):
    p = tmp_path / "other.pt"
    p.write_bytes(content)
    _expect_refused(p)


# -- crafted pickles: nothing runs ---------------------------------------------------------------------
class _Touch:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Open:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("kind", ["raw_pickle", "torch_zip_system", "torch_zip_open", "nested_in_state_dict",
                                  "nested_in_meta"])
def test_crafted_pickles_run_nothing(base, tmp_path, kind):
    marker = tmp_path / "pwned"
    p = tmp_path / f"{kind}.pt"
    if kind == "raw_pickle":
        p.write_bytes(pickle.dumps({"state_dict": _Touch(marker)}, protocol=2))
    elif kind in ("torch_zip_system", "torch_zip_open"):
        members = _zip_members(base)
        evil = _Touch(marker) if kind == "torch_zip_system" else _Open(marker)
        for name in members:
            if name.endswith("data.pkl"):
                members[name] = pickle.dumps(evil, protocol=2)
        _rezip(members, p)
    else:
        buf = io.BytesIO()
        payload = _payload(base)
        if kind == "nested_in_state_dict":
            payload["state_dict"]["fc.bias"] = _Touch(marker)
        else:
            payload["classes"] = _Open(marker)
        # torch.save pickles the object's reduce: the file holds the call, as an attacker would make it
        torch.save(payload, buf)
        p.write_bytes(buf.getvalue())
    _expect_refused(p, UnsafeFileError if kind != "raw_pickle" else UserError)
    assert not marker.exists(), "a crafted pickle ran"


def test_the_base_file_itself_loads(base):
    model, meta = load_teacher(base)
    assert meta["classes"] == CLASSES and meta["num_classes"] == 10
