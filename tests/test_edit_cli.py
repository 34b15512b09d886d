"""`gsplat-kit edit / invert / pnp` end to end on a tiny Stable Diffusion saved to a folder."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from edit_helpers import tiny_sd
from gsplat_kit.cli import main


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is ~40x faster than two on a loaded 2-core box
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sd")
    tiny_sd(seed=0, conv_out_scale=0.1).save_pretrained(str(d))
    return str(d)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    p = tmp_path_factory.mktemp("img") / "photo.png"
    y, x = np.mgrid[0:48, 0:40]
    img = np.stack([x * 6, y * 5, (x + y) * 3], -1).clip(0, 255).astype(np.uint8)
    Image.fromarray(img).save(p)
    return str(p)


def exit_code(argv) -> int:
    """`gsplat-kit argv`'s exit status: main's return value, or argparse's exit (bad options are refused
    while the command line is parsed)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def test_help_lists_verbs(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for verb in ("edit", "invert", "pnp"):
        assert verb in out
    with pytest.raises(SystemExit):
        main(["edit", "--help"])
    assert "--cross-replace-steps" in capsys.readouterr().out


def test_edit_generated(model_dir, tmp_path):
    out = tmp_path / "e"
    rc = main(["edit", "--model", model_dir, "--source", "a cat on the table", "--target", "a dog on the table",
               "--steps", "3", "--seed", "5", "--map-scale", "2", "--blend-words", "cat", "dog",
               "--equalizer", "dog=2", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    files = sorted(os.listdir(out))
    assert "settings.json" in files and "grid.png" in files and "attention.png" in files
    s = json.load(open(out / "settings.json"))
    assert s["prompts"] == ["a cat on the table", "a dog on the table"] and s["seed"] == 5
    assert s["cross_replace_steps"] == 0.8 and s["self_replace_steps"] == 0.4 and s["guidance_scale"] == 7.5
    a = np.asarray(Image.open(out / "00_source_a_cat_on_the_table.png"))
    assert a.shape == (32, 32, 3)
    # same seed, same images
    out2 = tmp_path / "e2"
    assert main(["edit", "--model", model_dir, "--source", "a cat on the table", "--target", "a dog on the table",
                 "--steps", "3", "--seed", "5", "--map-scale", "2", "--blend-words", "cat", "dog",
                 "--equalizer", "dog=2", "--out", str(out2), "--device", "cpu"]) == 0
    assert np.array_equal(np.asarray(Image.open(out2 / "grid.png")), np.asarray(Image.open(out / "grid.png")))


def test_invert_then_edit_real_image(model_dir, photo, tmp_path):
    inv_dir = tmp_path / "inv"
    assert main(["invert", "--model", model_dir, "--image", photo, "--prompt", "a cat next to a mirror",
                 "--method", "negative-prompt", "--steps", "3", "--out", str(inv_dir), "--device", "cpu"]) == 0
    s = json.load(open(inv_dir / "settings.json"))
    assert s["method"] == "negative-prompt" and os.path.exists(inv_dir / "inversion.pt")
    out = tmp_path / "edit"
    assert main(["edit", "--model", model_dir, "--inversion", str(inv_dir / "inversion.pt"), "--steps", "3",
                 "--source", "a cat next to a mirror", "--target", "a tiger next to a mirror", "--map-scale", "2",
                 "--out", str(out), "--device", "cpu"]) == 0
    s = json.load(open(out / "settings.json"))
    assert s["inversion_method"] == "negative-prompt" and s["self_min_scale"] == 2
    out2 = tmp_path / "edit2"  # --image: null-text inversion inside `edit`
    assert main(["edit", "--model", model_dir, "--image", photo, "--steps", "2", "--source", "a cat next to a mirror",
                 "--target", "a tiger next to a mirror", "--map-scale", "2", "--out", str(out2), "--device", "cpu"]) == 0
    assert os.path.exists(out2 / "inversion.pt") and os.path.exists(out2 / "01_target_a_tiger_next_to_a_mirror.png")


def test_pnp(model_dir, photo, tmp_path):
    out = tmp_path / "p"
    assert main(["pnp", "--model", model_dir, "--image", photo, "--prompt", "a photo of a tiger", "--steps", "3",
                 "--out", str(out), "--device", "cpu"]) == 0
    s = json.load(open(out / "settings.json"))
    assert s["pnp_f_t"] == 0.8 and s["pnp_attn_t"] == 0.5
    assert os.path.exists(out / "grid.png")


@pytest.mark.parametrize("argv, msg", [
    (["edit", "--model", "MISSING", "--source", "a cat", "--target", "a dog"], "no such folder"),
    (["edit", "--source", "a cat on the table", "--target", "a big dog on the table"], "same number of words"),
    (["edit", "--source", "a cat", "--target", "a dog", "--blend-words", "cat", "bird"], "bird"),
    (["edit", "--source", "a cat", "--target", "a dog", "--equalizer", "house=2"], "house"),
    (["edit", "--source", " ".join(["cat"] * 90), "--target", " ".join(["dog"] * 90)], "tokens"),
    (["edit", "--source", "a cat", "--target", "a dog", "--cross-replace-steps", "x"], "cross-replace-steps"),
    (["invert", "--image", "nope.jpg", "--prompt", "a cat"], "nope.jpg"),
])
def test_bad_input(model_dir, tmp_path, capsys, argv, msg):
    if "--model" not in argv:
        argv = argv[:1] + ["--model", model_dir] + argv[1:]
    rc = exit_code(argv + ["--steps", "2", "--out", str(tmp_path / "o"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and "Traceback" not in err, err


# ---- every numeric option is refused at parse time when out of range -----------------------------------------

_REQUIRED = {
    "edit": ["--source", "a cat", "--target", "a dog"],
    "invert": ["--image", "photo.png", "--prompt", "a cat"],
    "pnp": ["--image", "photo.png", "--prompt", "a cat"],
}
_COMMON_BAD = {"--steps": ["0", "-1", "1001", "nan", "2.5"], "--guidance": ["nan", "inf", "-inf", "-1", "x"],
               "--seed": ["-1", "1e3"], "--height": ["0", "-8", "7", "100000"], "--width": ["0", "nan"]}
_BAD = {
    "edit": {**_COMMON_BAD, "--self-min-scale": ["0", "-1", "nan"], "--blend-threshold": ["1.5", "-0.1", "nan"],
             "--map-scale": ["0", "0.5", "inf"], "--equalizer": ["dog=nan", "dog=inf", "dog", "dog=x"],
             "--cross-replace-steps": ["1.5", "nan", "-0.1", "0.9,0.1", "0.1,0.2,0.3", "default_=nan;dog=0.5"],
             "--self-replace-steps": ["2", "inf", "default_=0.5", "0.5,0.2"]},
    "invert": {**_COMMON_BAD, "--inner-steps": ["0", "-3", "nan", "1001"]},
    "pnp": {**_COMMON_BAD, "--inversion-steps": ["0", "-1", "nan"], "--pnp-f-t": ["1.5", "-0.1", "nan"],
            "--pnp-attn-t": ["inf", "2", "-1"]},
}


def test_out_of_range_table_covers_every_numeric_option():
    """A numeric option added without a case here fails this test."""
    from gsplat_kit.cli import build_parser

    sub = next(a for a in build_parser()._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    for verb, cases in _BAD.items():
        typed = {a.option_strings[0] for a in sub.choices[verb]._actions if a.option_strings and a.type is not None}
        assert typed == set(cases), (verb, typed ^ set(cases))


@pytest.mark.parametrize("verb, opt, value", [(v, o, x) for v, cases in _BAD.items() for o, xs in cases.items()
                                             for x in xs])
def test_out_of_range_option_is_one_line_exit_2(verb, opt, value, tmp_path, capsys):
    out = tmp_path / "o"
    rc = exit_code([verb, "--model", str(tmp_path / "no-model"), *_REQUIRED[verb], "--out", str(out), opt, value])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert opt in err and "Traceback" not in err, err  # names the option (a missing --model would not)
    assert not out.exists()


@pytest.mark.parametrize("argv, msg", [
    (["edit", "--source", "a cat", "--target", "a dog", "--device", "bogus"], "--device bogus"),
    (["invert", "--image", "PHOTO", "--prompt", "a cat", "--device", "cuda:7"], "--device cuda:7"),
    (["edit", "--source", "a cat", "--target", "a dog", "--blend-words", "cat"], "--blend-words"),
    (["edit", "--source", "a cat", "--target", "a dog", "--edit-type", "reweight"], "--equalizer"),
    (["pnp", "--image", "PHOTO", "--prompt", "a cat", "--feature-layers", "up_blocks.9"], "up_blocks.9"),
    (["pnp", "--image", "PHOTO", "--prompt", "a cat", "--inversion-steps", "3"], "do not include"),
    (["invert", "--image", "PHOTO", "--prompt", " ".join(["cat"] * 90)], "tokens"),
    (["invert", "--image", "JUNK", "--prompt", "a cat"], "not a readable image"),
    (["edit", "--image", "JUNK", "--source", "a cat", "--target", "a dog"], "not a readable image"),
    (["edit", "--source", "a cat", "--target", "a dog", "--map-scale", "64"], ""),  # attention.png: a note only
])
def test_bad_input_at_run_time_is_one_line(model_dir, photo, tmp_path, capsys, argv, msg):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))  # a JPEG header, then nothing decodable
    argv = [{"PHOTO": photo, "JUNK": str(junk)}.get(a, a) for a in argv]
    dev = [] if "--device" in argv else ["--device", "cpu"]
    out = tmp_path / "o"
    rc = exit_code(argv[:1] + ["--model", model_dir] + argv[1:] + ["--steps", "2", "--out", str(out)] + dev)
    err = capsys.readouterr().err
    if not msg:
        assert rc == 0 and "no attention grid" in err
        return
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and msg in err, err
    assert not out.exists()  # found before the output folder was claimed


# ---- an output folder holds one run ----------------------------------------------------------------------------

def _edit(model_dir, out, source, target, *extra):
    return exit_code(["edit", "--model", model_dir, "--source", source, "--target", target, "--steps", "2",
                      "--map-scale", "2", "--out", str(out), "--device", "cpu", *extra])


def test_output_folder_belongs_to_one_run(model_dir, tmp_path, capsys):
    out = tmp_path / "e"
    assert _edit(model_dir, out, "a cat on the table", "a dog on the table") == 0
    def contents():  # but the lock file, which names the latest process that asked for the folder
        return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".gsplat_kit.lock"}

    first = contents()
    assert "00_source_a_cat_on_the_table.png" in first and "gsplat_kit_run.json" in first
    capsys.readouterr()

    # a second run into the same folder is refused, and the folder is left as it was
    assert _edit(model_dir, out, "a bird on the table", "a car on the table") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err and str(out) in err, err
    assert contents() == first

    # --overwrite: only the new run's files remain (none of the previous run's images beside them)
    assert _edit(model_dir, out, "a bird on the table", "a car on the table", "--overwrite") == 0
    names = sorted(p.name for p in out.iterdir())
    s = json.load(open(out / "settings.json"))
    assert s["prompts"] == ["a bird on the table", "a car on the table"]
    assert names == sorted(set(s["files"]) | {"settings.json", "gsplat_kit_run.json", ".gsplat_kit.lock"}), names
    assert "00_source_a_bird_on_the_table.png" in names and not any("cat" in n or "dog" in n for n in names)

    # a folder that is a file, or another verb's run, is refused too
    (tmp_path / "f").write_text("x")
    assert _edit(model_dir, tmp_path / "f", "a cat", "a dog") == 2
    assert exit_code(["invert", "--model", model_dir, "--image", str(out / "grid.png"), "--prompt", "a cat",
                      "--method", "ddim", "--steps", "2", "--out", str(out), "--device", "cpu"]) == 2
    assert "holds a previous edit run" in capsys.readouterr().err


# ---- --inversion is data only ----------------------------------------------------------------------------------

class _Evil:
    def __init__(self, flag):
        self.flag = flag

    def __reduce__(self):
        return (os.makedirs, (self.flag,))  # would run on an unsafe load


@pytest.mark.parametrize("kind, msg", [("pickle", "pickled object"), ("junk", "not a readable inversion file"),
                                       ("wrong", "not an inversion file"), ("short", "trajectory"),
                                       ("other-model", "another model")])
def test_inversion_file_is_data_only(model_dir, tmp_path, capsys, kind, msg):
    flag = tmp_path / "ran"
    bad = tmp_path / "inv.pt"
    if kind == "pickle":
        torch.save({"latents": torch.zeros(1, 4, 16, 16), "evil": _Evil(str(flag))}, bad)
    elif kind == "junk":
        bad.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "wrong":
        torch.save([1, 2, 3], bad)
    elif kind == "short":  # a well-formed dict with a trajectory that does not fit its timesteps
        torch.save(dict(latents=torch.zeros(1, 4, 16, 16), trajectory=[torch.zeros(1, 4, 16, 16)],
                        uncond_embeddings=[torch.zeros(1, 77, 32)] * 2, timesteps=torch.tensor([500, 0]),
                        prompt="a cat", method="ddim", guidance_scale=7.5), bad)
    else:  # a consistent inversion of a model with another text encoder width
        torch.save(dict(latents=torch.zeros(1, 4, 16, 16), trajectory=[torch.zeros(1, 4, 16, 16)] * 3,
                        uncond_embeddings=[torch.zeros(1, 77, 64)] * 2, timesteps=torch.tensor([500, 0]),
                        prompt="a cat", method="ddim", guidance_scale=7.5), bad)
    out = tmp_path / "o"
    rc = exit_code(["edit", "--model", model_dir, "--inversion", str(bad), "--source", "a cat", "--target", "a dog",
                    "--steps", "2", "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert str(bad) in err and msg in err, err
    assert not flag.exists() and not out.exists()
