"""Every numeric option of train / eval / render and every config field is checked when it is parsed:
an out-of-range value, a wrong type or an unknown key is one line on stderr and exit 2, before any data
is loaded or any output folder is made."""
import json
import os

import pytest

import gsplat_kit.scene.splats as splats_mod
import gsplat_kit.train.loop as loop_mod
from gsplat_kit.cli import main
from gsplat_kit.common.errors import UserError
from gsplat_kit.train.config import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATUE = os.path.join(os.path.dirname(ROOT), "shared", "data", "statue_bartoszek")

# (extra arguments, a word the one-line message must contain)
TRAIN_CASES = [
    (["--steps", "0"], "--steps"), (["--steps", "-5"], "--steps"), (["--steps", "abc"], "--steps"),
    (["--data-factor", "0"], "--data-factor"), (["--data-factor", "1000"], "--data-factor"),
    (["--test-every", "-1"], "--test-every"), (["--sh-degree", "7"], "--sh-degree"), (["--sh-degree", "-1"], "--sh-degree"),
    (["--seed", "-1"], "--seed"), (["--threads", "-2"], "--threads"), (["--ckpt-every", "-1"], "--ckpt-every"),
    (["--init-opacity", "0"], "--init-opacity"), (["--init-opacity", "1.5"], "--init-opacity"),
    (["--init-opacity", "nan"], "--init-opacity"), (["--viewer-port", "70000"], "--viewer-port"),
    (["--viewer-port", "-1"], "--viewer-port"), (["--device", "bogus"], "--device"), (["--device", "cuda:x"], "--device"),
    (["--strategy", "mcmc", "--cap-max", "-5"], "--cap-max"), (["--strategy", "mcmc", "--cap-max", "0"], "--cap-max"),
    (["--cap-max", "100"], "cap_max"),                                    # not an option of the default strategy
    (["--strategy-opt", "grow_grad2d=abc"], "grow_grad2d"), (["--strategy-opt", "grow_grad2d=-1"], "grow_grad2d"),
    (["--strategy-opt", "refine_every=0"], "refine_every"), (["--strategy-opt", "reset_every=-3"], "reset_every"),
    (["--strategy-opt", "prune_opa=2"], "prune_opa"), (["--strategy-opt", "split_samples=1.5"], "split_samples"),
    (["--strategy-opt", "nonsense=1"], "nonsense"), (["--strategy-opt", "refine_every"], "KEY=VALUE"),
    (["--strategy", "mcmc", "--strategy-opt", "grow_factor=0.5"], "grow_factor"),
    (["--strategy", "mcmc", "--strategy-opt", "min_opacity=nan"], "min_opacity"),
    (["--strategy", "bogus"], "--strategy"),
]
VIEW_CASES = [
    (["--data-factor", "0"], "--data-factor"), (["--test-every", "-2"], "--test-every"),
    (["--device", "gpu"], "--device"), (["--data-factor", "x"], "--data-factor"),
]
RENDER_CASES = [
    (["--frames", "1"], "--frames"), (["--frames", "0"], "--frames"), (["--fps", "0"], "--fps"),
    (["--fps", "100000"], "--fps"), (["--scale", "0"], "--scale"), (["--scale", "-1"], "--scale"),
    (["--scale", "nan"], "--scale"), (["--scale", "100"], "--scale"),
]
CONFIG_CASES = [  # --config file content -> the field its one line names
    ({"steps": "many"}, "steps"), ({"steps": 0}, "steps"), ({"ssim_lambda": 2}, "ssim_lambda"),
    ({"sh_degree": 3.5}, "sh_degree"), ({"means_lr": -1}, "means_lr"), ({"near_plane": 0}, "near_plane"),
    ({"far_plane": 0.001, "near_plane": 0.01}, "far_plane"), ({"keep_ckpts": -1}, "keep_ckpts"),
    ({"eval": "yes"}, "eval"), ({"strategy_options": {"refine_every": 0}}, "refine_every"),
    ({"strategy_options": {"grow_grad2d": "abc"}}, "grow_grad2d"), ({"strategy_options": []}, "strategy_options"),
    ({"stepz": 3}, "stepz"), ([1, 2], "JSON object"), ({"device": "tpu"}, "device"),
]


@pytest.fixture
def no_loading(monkeypatch):
    """Any data loading fails the test: the option checks must come first."""
    def forbidden(*a, **k):
        raise AssertionError("data was loaded before the options were checked")

    monkeypatch.setattr(loop_mod, "load_scene", forbidden)     # the trainers load their scene through it
    monkeypatch.setattr(splats_mod, "load_splats", forbidden)


def _one_line_exit_2(argv, capsys, needle):
    try:
        rc = main(argv)
    except SystemExit as e:     # argparse's own usage errors
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, (argv, rc, err)
    assert err.startswith("error: ") and err.count("\n") == 1, (argv, err)
    assert needle in err, (argv, needle, err)


@pytest.mark.parametrize("extra,needle", TRAIN_CASES, ids=lambda x: " ".join(x) if isinstance(x, list) else None)
def test_train_options(extra, needle, tmp_path, capsys, no_loading):
    _one_line_exit_2(["train", "--data", STATUE, "--out", str(tmp_path / "out"), *extra], capsys, needle)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("verb", ["eval", "render"])
@pytest.mark.parametrize("extra,needle", VIEW_CASES, ids=lambda x: " ".join(x) if isinstance(x, list) else None)
def test_eval_render_options(verb, extra, needle, tmp_path, capsys, no_loading):
    out = ["--out", str(tmp_path / "v.mp4")] if verb == "render" else []
    _one_line_exit_2([verb, "--splats", str(tmp_path), "--data", STATUE, *out, *extra], capsys, needle)


@pytest.mark.parametrize("extra,needle", RENDER_CASES, ids=lambda x: " ".join(x) if isinstance(x, list) else None)
def test_render_options(extra, needle, tmp_path, capsys, no_loading):
    _one_line_exit_2(["render", "--splats", str(tmp_path), "--data", STATUE, "--out", str(tmp_path / "v.mp4"), *extra],
                     capsys, needle)


@pytest.mark.parametrize("content,needle", CONFIG_CASES, ids=lambda x: json.dumps(x) if not isinstance(x, str) else None)
def test_config_fields(content, needle, tmp_path, capsys, no_loading):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(content))
    _one_line_exit_2(["train", "--config", str(cfg), "--data", STATUE, "--out", str(tmp_path / "out")], capsys, needle)
    assert not (tmp_path / "out").exists()


def test_flags_override_config_and_are_named(tmp_path, capsys, no_loading):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"steps": 0}))
    # the flag's value wins over the file's (so the file's 0 is not an error) ...
    with pytest.raises(AssertionError, match="data was loaded"):
        main(["train", "--config", str(cfg), "--data", STATUE, "--out", str(tmp_path / "ok"), "--steps", "5"])
    # ... and a value from the file is named by the file and field
    _one_line_exit_2(["train", "--config", str(cfg), "--data", STATUE, "--out", str(tmp_path / "o")], capsys,
                     f"--config {cfg}: steps")


def test_config_api_checks_types_and_ranges():
    with pytest.raises(UserError, match="steps"):
        TrainConfig.from_dict({"steps": "10"})
    assert TrainConfig.from_dict({"init_opacity": 1}).init_opacity == 1.0     # ints are fine for float fields...
    with pytest.raises(UserError, match="init_opacity"):
        TrainConfig(init_opacity=1.0).validate()                             # ... the range is still checked
    cfg = TrainConfig(strategy_options={"grow_grad2d": 1}).validate()
    assert cfg.strategy_options == {"grow_grad2d": 1.0} and isinstance(cfg.strategy_options["grow_grad2d"], float)
