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
