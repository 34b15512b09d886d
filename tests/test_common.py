"""The shared core: atomic writes, confined paths, options, data-only loading, run folders, CLI errors."""
import dataclasses
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch

from gsplat_kit.common import atomic
from gsplat_kit.common.errors import UserError
from gsplat_kit.common.options import check_range, coerce_fields, parse_key_values
from gsplat_kit.common.paths import inside, safe_name
from gsplat_kit.common.run_folder import LOCK, MARKER, RunFolder
from gsplat_kit.common.safe_load import UnsafeFileError, load_torch_data


def test_atomic_write_all_or_nothing(tmp_path):
    p = tmp_path / "a" / "x.json"
    atomic.write_json(p, {"k": 1})
    assert p.read_text().strip().startswith("{")
    with pytest.raises(RuntimeError):
        with atomic.atomic_write(p) as f:
            f.write(b"half")
            raise RuntimeError("killed")
    assert '"k": 1' in p.read_text()  # untouched
    assert os.listdir(p.parent) == ["x.json"]  # no temporary left


def test_atomic_path_keeps_suffix_and_dir(tmp_path):
    with atomic.atomic_path(tmp_path / "v.pt") as tmp:
        assert tmp.suffix == ".pt" and tmp.parent == tmp_path
        torch.save({"a": torch.ones(2)}, tmp)
    assert torch.load(tmp_path / "v.pt")["a"].sum() == 2
    with atomic.atomic_dir(tmp_path / "d") as d:
        (d / "f").write_text("x")
    assert (tmp_path / "d" / "f").read_text() == "x"


def test_stale_temps_removed_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "sub" / f".ckpt.pt{atomic.TMP_TAG}{dead.pid}-abcd1234"
    stale.parent.mkdir()
    stale.write_bytes(b"x")
    live = tmp_path / f".m.json{atomic.TMP_TAG}{os.getpid()}-abcd1234"
    live.write_bytes(b"x")
    other = tmp_path / ".hidden"
    other.write_bytes(b"x")
    assert atomic.remove_stale_temps(tmp_path) == [stale]
    assert live.exists() and other.exists()


@pytest.mark.parametrize("rel", ["../x.png", "a/../../x.png", "/etc/passwd", "", "a\x00b"])
def test_inside_refuses_escapes(tmp_path, rel):
    with pytest.raises(UserError, match="images.txt: image 3"):
        inside(tmp_path, rel, "images.txt: image 3")


def test_inside_refuses_symlink_escape(tmp_path):
    (tmp_path / "root").mkdir()
    os.symlink("/etc", tmp_path / "root" / "link")
    assert inside(tmp_path / "root", "a/b.png", "x") == (tmp_path / "root" / "a" / "b.png").resolve()
    with pytest.raises(UserError, match="leads outside"):
        inside(tmp_path / "root", "link/passwd", "x")


def test_safe_name_deterministic_and_distinct():
    assert safe_name("airplane") == "airplane"
    names = ["", ".", "..", "../../x", "/abs/x", "a/b", "a_b", "ä"]
    mapped = [safe_name(n) for n in names]
    assert len(set(mapped)) == len(mapped)
    assert all("/" not in m and m not in ("", ".", "..") for m in mapped)
    assert mapped == [safe_name(n) for n in names]


def test_options():
    assert parse_key_values(["a=1", "b=x", "c=[1, 2]"], "--opt") == {"a": 1, "b": "x", "c": [1, 2]}
    with pytest.raises(UserError, match="--opt expects KEY=VALUE"):
        parse_key_values(["a"], "--opt")

    @dataclasses.dataclass
    class C:
        lr: float = 0.1
        every: int = 100
        name: str = "x"
        pair: tuple[float, float] = (0.0, 1.0)
        maybe: int | None = None

    assert coerce_fields(C, {"lr": 1, "pair": [1, 2], "maybe": None}, "cfg") == {"lr": 1.0, "pair": (1.0, 2.0), "maybe": None}
    for bad, msg in [({"lr": "abc"}, "cfg lr: expected a number"), ({"every": 1.5}, "cfg every: expected an integer"),
                     ({"nope": 1}, r"unknown field\(s\) \['nope'\]"), ({"lr": float("nan")}, "finite")]:
        with pytest.raises(UserError, match=msg):
            coerce_fields(C, bad, "cfg")
    assert check_range("--x", 0, lo=0) == 0
    with pytest.raises(UserError, match=r"--temperature must be > 0, got 0"):
        check_range("--temperature", 0, lo=0, lo_open=True)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_crafted_pickle_does_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "evil.pt"
    torch.save({"splats": _Evil()}, p)
    with pytest.raises(UnsafeFileError, match="evil.pt"):
        load_torch_data(p, "checkpoint")
    assert not (tmp_path / "PWNED").exists()
    p.write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_torch_data(p, "checkpoint")
    p.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(UserError):
        load_torch_data(p, "checkpoint")
    assert not (tmp_path / "PWNED").exists()


def test_run_folder_rules(tmp_path):
    out = tmp_path / "run"
    with RunFolder.claim(out, "train") as run:
        (run.path / "ckpts").mkdir()
        (run.path / "ckpts" / "ckpt_000400.pt").write_bytes(b"first")
    assert (out / MARKER).is_file()
    with pytest.raises(UserError, match="holds a previous train run.*--resume"):
        RunFolder.claim(out, "train")
    with pytest.raises(UserError, match="not a 'edit' run|cannot be resumed"):
        RunFolder.claim(out, "edit", resume=True)
    with RunFolder.claim(out, "train", resume=True):
        pass
    (out / "notes.txt").write_text("mine")  # the user's own file: never deleted
    run = RunFolder.claim(out, "train", overwrite=True)
    (run.path / "ckpts").mkdir()
    (run.path / "ckpts" / "ckpt_000100.pt").write_bytes(b"second")
    assert (out / "ckpts" / "ckpt_000400.pt").read_bytes() == b"first"  # until the new run finishes
    run.finish()
    assert sorted(os.listdir(out / "ckpts")) == ["ckpt_000100.pt"]
    assert (out / "notes.txt").read_text() == "mine"
    assert not any(atomic.temp_owner(n) for n in os.listdir(out))


def test_run_folder_refuses_foreign_files_and_files(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        RunFolder.claim(tmp_path / "f", "edit")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(UserError, match="not empty"):
        RunFolder.claim(tmp_path / "d", "edit")
    with pytest.raises(UserError, match="no gsplat_kit run here to resume"):
        RunFolder.claim(tmp_path / "d", "edit", resume=True)


def test_run_folder_lock_live_and_stale(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from gsplat_kit.common.run_folder import RunFolder
        r = RunFolder.claim({str(out)!r}, "train")
        print("ready", flush=True)
        time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(UserError, match=rf"another gsplat-kit process \(pid {holder.pid}, train\)"):
            RunFolder.claim(out, "train", resume=True)
    finally:
        holder.kill()
        holder.wait()
    assert (out / LOCK).exists()  # left by the killed process: stale, so the next run takes it
    with RunFolder.claim(out, "train", resume=True):
        pass


def test_cli_user_error_is_one_line_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "gsplat_kit.cli", "export", str(tmp_path / "missing.ply"), "--out",
                        str(tmp_path / "x.ply")], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "missing.ply" in r.stderr
    r = subprocess.run([sys.executable, "-m", "gsplat_kit.cli", "train", "--steps", "abc"], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--steps" in r.stderr


def test_run_folder_failed_before_writing_leaves_nothing(tmp_path):
    out = tmp_path / "new"
    with pytest.raises(RuntimeError):
        with RunFolder.claim(out, "train"):
            raise RuntimeError("bad --data")
    assert not out.exists()  # created by the claim, nothing written: gone
    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError):
        with RunFolder.claim(tmp_path / "kept", "train"):
            raise RuntimeError("bad --data")
    assert (tmp_path / "kept").is_dir() and not any((tmp_path / "kept").iterdir())  # the user's folder stays


@pytest.mark.parametrize("missing, extra", [("diffusers.models", "edit"), ("torch_pruning", "synth")])
def test_cli_names_the_extra_of_a_missing_optional_dependency(monkeypatch, capsys, missing, extra):
    """A verb that meets an optional dependency missing ends in one line naming the extra (exit 2); any
    other missing module stays a bug with its traceback."""
    import argparse

    from gsplat_kit import cli

    def parser_raising(name):
        def raise_missing(args):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

        p = argparse.ArgumentParser()
        p.add_argument("verb")
        p.set_defaults(func=raise_missing)
        return lambda: p

    monkeypatch.setattr(cli, "build_parser", parser_raising(missing))
    assert cli.main(["edit"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"needs {missing.split('.')[0]}" in err and f"gsplat_kit[{extra}]" in err
    monkeypatch.setattr(cli, "build_parser", parser_raising("no_such_module"))
    with pytest.raises(ModuleNotFoundError):
        cli.main(["edit"])
