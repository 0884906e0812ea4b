"""Bad options: a one-line message that says what to do, and exit code 2 from every CLI."""
import json

import pytest
import torch

from bgtutorial import demo, experiments
from bgtutorial.cli import main
from bgtutorial.config import load_config
from bgtutorial.utils import device

BAD_FIELDS = [("batch_size", "0"), ("batch_size", "-12"), ("lr", "inf"), ("lr", "nan"), ("lr", "0"),
              ("weight_decay", "inf"), ("weight_decay", "-1e-4"), ("lr_step", "0"), ("steps_per_epoch", "-1"),
              ("proxy_lr_mult", "-100"), ("module_lr_mult", "-1"), ("lr_gamma", "0"), ("margin", "nan"),
              ("epochs", "0"), ("eval_batch_size", "0")]


@pytest.mark.parametrize("field,value", BAD_FIELDS)
def test_bad_config_values_are_refused_with_the_field_named(field, value, capsys, tmp_path):
    kind = type(getattr(load_config("digits"), field))
    with pytest.raises(ValueError, match=field):
        load_config("digits", **{field: kind(float(value))})
    assert main(["--preset", "digits", "--out", str(tmp_path), f"--{field}={value}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and field in err
    assert "--" in err or "try" in err                          # says what to pass instead
    assert not any(tmp_path.iterdir())                          # refused before anything was written


@pytest.mark.parametrize("name,expect", [("gpu", "unknown device 'gpu'"), ("cuda:7", "does not exist"),
                                         ("mps", "not available"), ("meta", "cannot train")])
def test_device_that_does_not_exist(name, expect, capsys, tmp_path):
    if name == "cuda:7" and torch.cuda.device_count() > 7 or name == "mps" and torch.backends.mps.is_available():
        pytest.skip(f"{name} exists on this machine")
    with pytest.raises(ValueError, match=expect):
        device(name)
    assert main(["--preset", "digits", "--out", str(tmp_path), "--device", name]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expect in err and "choose 'cpu'" in err
    assert device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("entry,argv", [(main, ["--epoch", "1"]), (main, ["--res"]),
                                        (experiments.main, ["--seed", "0"]), (demo.main, ["--pre", "digits"])])
def test_clis_refuse_abbreviated_options(entry, argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        entry(argv)
    assert exit_.value.code == 2 and f"unrecognized arguments: {argv[0]}" in capsys.readouterr().err


def test_experiments_and_demo_clis_exit_2_on_bad_values(capsys, tmp_path):
    assert experiments.main(["--runs", str(tmp_path), "--epochs", "0"]) == 2
    assert "epochs=0 is out of range" in capsys.readouterr().err
    assert experiments.main(["--runs", str(tmp_path), "--methods", "transformer"]) == 2
    assert "unknown method 'transformer'" in capsys.readouterr().err
    assert demo.main(["--out", str(tmp_path), "--epochs", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "epochs=0 is out of range" in err


# ---------------------------------------------------------------- issue 23: bounds with their reasons, options named
def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


MEANINGLESS = [  # (argv, what the message must say): the option named, the reason, what to pass
    (["--alpha", "0"], "alpha=0.0 must be > 0: Proxy-Anchor's alpha scales"),
    (["--alpha", "-32"], "--alpha 32"),
    (["--margin", "-0.1"], "margin=-0.1 must be in [0, 1)"),
    (["--clip_r", "0"], "clip_r=0.0 must be > 0"),
    (["--curvature", "0"], "curvature=0.0 must be > 0"),
    (["--curvature", "-1"], "--curvature 0.1"),
    (["--tau", "0"], "tau=0.0 must be > 0"),
    (["--embed_dim", "100000000"], "embed_dim=100000000 is larger than 16,384"),
    (["--image_size", "200000"], "image_size=200000 must be in [16, 128]"),
    (["--image_size", "1"], "image_size=1 must be in [16, 128]"),
    (["--seed", "-1"], "seed=-1 is out of range"),
    (["--seed", str(2**40)], "--seed 0"),
    (["--data_seed", "-3"], "data_seed=-3 is out of range"),
    (["--batch_module", "batchformer", "--module_kwargs", "[1]"], "module_kwargs must be a JSON object"),
    (["--batch_module", "batchformer", "--module_kwargs", '{"foo": 1}'], "batchformer has no option 'foo'"),
    (["--batch_module", "batchformer", "--module_kwargs", '{"num_heads": "4"}'],
     "num_heads must be an integer, got '4'"),
    (["--batch_module", "bgformer", "--module_kwargs", '{"k": 0}'], "k counts something, so it must be >= 1"),
    (["--batch_module", "bgformer", "--module_kwargs", '{"dropout": 1.5}'], "dropout is a probability"),
    (["--preset", "../../pyproject"], "unknown preset '../../pyproject'"),
    (["--preset", "../configs/glyphs"], "unknown preset '../configs/glyphs'"),
]


@pytest.mark.parametrize("argv,expect", MEANINGLESS, ids=[" ".join(a) for a, _ in MEANINGLESS])
def test_meaningless_values_are_refused_with_the_reason_before_anything_is_written(argv, expect, capsys, tmp_path):
    """Issue 23, items 6-7: each was accepted (or crashed with a traceback naming no option); the seed's
    config.json was written first, so the retry needed --force."""
    preset = [] if argv[0] == "--preset" else ["--preset", "digits"]
    assert main([*preset, "--out", str(tmp_path / "run"), "--data_root", str(tmp_path / "data"), *argv]) == 2
    assert expect in _one_line_error(capsys)
    assert not any(tmp_path.iterdir())                          # refused before anything was written


def test_other_image_sizes_name_the_reason(capsys, tmp_path):
    assert main(["--preset", "smoke", "--out", str(tmp_path), "--image_size", "200000"]) == 2
    assert "image_size=200000 must be in [16, 1024]: CUB's photographs are at most 500 px" in _one_line_error(capsys)
    with pytest.raises(ValueError, match="ViT-S/16's pretrained position embeddings are for 224 px"):
        load_config("cub-vits", image_size=64)


def _bad_preset(monkeypatch, tmp_path, text: str) -> None:
    """A package whose configs/ folder holds ``bad.toml`` with ``text`` (and nothing else)."""
    from bgtutorial import config as config_module

    (tmp_path / "pkg" / "configs").mkdir(parents=True)
    (tmp_path / "pkg" / "configs" / "bad.toml").write_text(text)
    monkeypatch.setattr(config_module.resources, "files", lambda package: tmp_path / "pkg")


@pytest.mark.parametrize("text,expect", [
    ('epoch = 3\n', "unknown field 'epoch' (did you mean epochs"),
    ('epochs = "3"\n', "epochs must be an integer, got '3' (str) in preset file"),
    ('lr = true\n', "lr must be a number, got True"),
    ('module_kwargs = [1, 2]\n', "module_kwargs must be a JSON object"),
    ('[bgformer]\nlamda = 0.3\n', "[bgformer]: unknown field 'lamda'"),
    ('epochs = \n', "is not valid TOML"),
])
def test_preset_files_with_unknown_fields_or_wrong_types(monkeypatch, tmp_path, capsys, text, expect):
    _bad_preset(monkeypatch, tmp_path, text)
    assert main(["--preset", "bad", "--out", str(tmp_path / "run")]) == 2
    assert expect in _one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_python_overrides_of_the_wrong_type_name_the_field():
    with pytest.raises(ValueError, match=r"epochs must be an integer, got '3' \(str\); e.g. --epochs 8"):
        load_config("digits", epochs="3")


def test_world_size_that_is_not_a_number(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "abc")
    assert main(["--preset", "digits", "--out", str(tmp_path / "run")]) == 2
    assert "WORLD_SIZE='abc' is not a non-negative integer" in _one_line_error(capsys)


def test_out_data_root_and_runs_that_are_files(capsys, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    assert main(["--preset", "digits", "--out", str(afile)]) == 2
    assert "the run folder" in (err := _one_line_error(capsys)) and "is a file" in err and "--out" in err
    assert main(["--preset", "digits", "--out", str(afile / "run")]) == 2
    assert f"lies under {afile}, which is a file" in _one_line_error(capsys)
    assert main(["--preset", "digits", "--out", str(tmp_path / "run"), "--data_root", str(afile)]) == 2
    assert "the data folder" in (err := _one_line_error(capsys)) and "--data_root" in err
    assert experiments.main(["--preset", "digits", "--runs", str(afile), "--seeds", "0", "--methods", "baseline"]) == 2
    assert "--runs" in _one_line_error(capsys)
    assert afile.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_pretrained_weights_offline_say_where_to_place_them(monkeypatch, capsys, tmp_path):
    """``--pretrained true`` without a network: a URLError traceback before; now where to put the file."""
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))           # an empty cache: the download is tried
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    assert main(["--preset", "digits", "--out", str(tmp_path / "run"), "--backbone", "resnet18",
                 "--pretrained", "true"]) == 2
    err = _one_line_error(capsys)
    assert "could not download the pretrained weights of resnet18 (URLError" in err
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-") in err and "--pretrained false" in err
    assert not (tmp_path / "run").exists()                               # config.json is written after the model


# ---------------------------------------------------------------- issue 32, item 4: the sweep reaches pretrain and experiments
def _pretrain_main(argv):
    from bgtutorial import pretrain

    return pretrain.main(argv)


SWEEP = [  # (entry, argv, what the one line names): refused before anything is rendered, trained or written
    (_pretrain_main, ["--epochs", "0"], "--epochs 0"),
    (_pretrain_main, ["--epochs", "-1"], "--epochs -1"),
    (_pretrain_main, ["--seed", str(2**40)], "--seed 1099511627776"),
    (_pretrain_main, ["--lr", "inf"], "--lr inf"),
    (_pretrain_main, ["--heldout", "40"], "--heldout 40"),
    (_pretrain_main, ["--per_class", "0"], "--per_class 0"),
    (_pretrain_main, ["--out", "x" * 300], "--out xxxx"),
    (_pretrain_main, ["--work", "{afile}"], "--work {afile} is a file"),
    (_pretrain_main, ["--data_root", "{afile}/sub"], "--data_root {afile}/sub lies under {afile}"),
    (experiments.main, ["--epochs", "0"], "epochs=0 is out of range"),
    (experiments.main, ["--seeds", "3", "3"], "--seeds: 3 is given twice"),
    (experiments.main, ["--seeds", "-1"], "seed=-1 is out of range"),
    (experiments.main, ["--noise", "1.5"], "label_noise"),
    (experiments.main, ["--noise", "0.4", "--field", "corrupt", "--methods", "baseline", "--plain-weight", "0.1"],
     "--plain-weight"),
    (experiments.main, ["--methods", "bgformer", "--lam", "7"], "lam"),
    (experiments.main, ["--runs", "y" * 300], "has a name of 300 bytes"),
    (experiments.main, ["--runs", "{afile}"], "--runs"),
    (main, ["--out", "z" * 300], "has a name of 300 bytes"),
]


_NAMES = {main: "train", experiments.main: "experiments"}


@pytest.mark.parametrize("entry,argv,expect", SWEEP, ids=[f"{_NAMES.get(e, 'pretrain')} {' '.join(a)[:30]}" for e, a, _ in SWEEP])
def test_the_sweep_covers_pretrain_and_experiments(entry, argv, expect, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    afile = tmp_path / "afile"
    afile.write_text("mine")
    fill = lambda text: text.replace("{afile}", str(afile))                          # noqa: E731
    extra = ["--preset", "digits", "--data_root", str(tmp_path / "data")] if entry is main else []
    extra += ["--preset", "digits", "--seeds", "0", "1"] if entry is experiments.main and "--seeds" not in argv else []
    assert entry([*extra, *map(fill, argv)]) == 2
    assert fill(expect) in _one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"] and afile.read_text() == "mine"


def _damaged_shelf(monkeypatch, tmp_path, damage) -> str:
    """A copy of the shipped seed-0 and seed-1 baseline histories of the plain glyphs study, seed 1's damaged
    by ``damage(text) -> text``; returns seed 1's file name."""
    shelf = tmp_path / "published"
    shelf.mkdir()
    for seed in (0, 1):
        name = f"glyphs-baseline-noise0-seed{seed}.json"
        text = (experiments.PUBLISHED / name).read_text()
        (shelf / name).write_text(damage(text) if seed == 1 else text)
    monkeypatch.setattr(experiments, "PUBLISHED", shelf)
    return str(shelf / "glyphs-baseline-noise0-seed1.json")


def _drop(key):
    def damage(text):
        h = json.loads(text)
        h.pop(key)
        return json.dumps(h)
    return damage


def _last_record(change):
    def damage(text):
        h = json.loads(text)
        change(h["epochs"][-1])
        return json.dumps(h)
    return damage


DAMAGE = [(_drop("config"), "no 'config'/'epochs'"),
          (lambda t: json.dumps({**json.loads(t), "epochs": {"1": 2}}), "'epochs' is a dict"),
          (_last_record(lambda r: r.pop("R@1")), "has no R@1"),
          (_last_record(lambda r: r.update({"R@1": float("nan")})), "NaN or inf under 'R@1'"),
          (lambda t: t[: len(t) // 2], "is not JSON"),
          (lambda t: "[1, 2]", "no 'config'/'epochs'")]


@pytest.mark.parametrize("damage,expect", DAMAGE, ids=["no config", "epochs not a list", "no R@1", "NaN", "half", "a list"])
def test_damaged_shipped_histories_are_one_line_naming_the_file(damage, expect, monkeypatch, tmp_path, capsys):
    path = _damaged_shelf(monkeypatch, tmp_path, damage)
    assert experiments.main(["--preset", "glyphs", "--seeds", "0", "1", "--methods", "baseline", "--shipped"]) == 2
    err = _one_line_error(capsys)
    assert path in err and expect in err and "reinstall bgtutorial" in err


@pytest.mark.parametrize("meta,expect", [('{"characters": []}', "holds no sha256"), ('{"sha256": 12}', "holds no sha256"),
                                         ('["sha256"]', "holds no sha256"), ('{"sha256": ', "is not JSON")])
def test_malformed_weights_json_is_one_line_naming_it(meta, expect, tmp_path):
    import shutil

    from bgtutorial.models import GLYPH_WEIGHTS, SmallCNN, load_glyph_weights

    weights = tmp_path / GLYPH_WEIGHTS.name
    shutil.copy(GLYPH_WEIGHTS, weights)
    weights.with_suffix(".json").write_text(meta)
    with pytest.raises(ValueError, match=f"{weights.with_suffix('.json')} {expect}") as err:
        load_glyph_weights(SmallCNN(), weights)
    assert "\n" not in str(err.value)


def test_weights_of_another_shape_or_with_nan_are_one_line_naming_the_file(tmp_path):
    import hashlib

    from bgtutorial.models import GLYPH_WEIGHTS, SmallCNN, load_glyph_weights

    weights = tmp_path / GLYPH_WEIGHTS.name
    for state, expect in ((SmallCNN(width=16).state_dict(), "size mismatch"),
                          ({k: v * float("nan") if v.is_floating_point() else v
                            for k, v in SmallCNN().state_dict().items()}, "hold NaN or inf")):
        torch.save(state, weights)
        weights.with_suffix(".json").write_text('{"sha256": "%s"}' % hashlib.sha256(weights.read_bytes()).hexdigest())
        with pytest.raises(ValueError, match=f"{weights} does not hold SmallCNN weights") as err:
            load_glyph_weights(SmallCNN(), weights)
        assert expect in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name,value", [("RANK", "abc"), ("LOCAL_RANK", "-2"), ("RANK", "1.5")])
def test_rank_that_is_not_a_number(name, value, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(name, value)
    assert main(["--preset", "digits", "--out", str(tmp_path / "run")]) == 2
    assert f"{name}={value!r} is not a non-negative integer" in _one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_a_binary_preset_file_is_one_line(monkeypatch, tmp_path, capsys):
    from bgtutorial import config as config_module

    (tmp_path / "pkg" / "configs").mkdir(parents=True)
    (tmp_path / "pkg" / "configs" / "bad.toml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    monkeypatch.setattr(config_module.resources, "files", lambda package: tmp_path / "pkg")
    assert main(["--preset", "bad", "--out", str(tmp_path / "run")]) == 2
    assert "bad.toml is not UTF-8 text (byte 0)" in _one_line_error(capsys)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_paired_summary_refuses_nan_and_inf_naming_the_value(bad):
    from bgtutorial.stats import paired_summary

    with pytest.raises(ValueError, match=f"treatment value 1 is {bad}, not a finite number"):
        paired_summary([0.5, bad, 0.4], [0.4, 0.4, 0.4])
    with pytest.raises(ValueError, match=f"baseline value 2 is {bad}"):
        paired_summary([0.5, 0.4, 0.4], [0.4, 0.4, bad])


def test_a_lock_that_is_a_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "run" / ".lock").mkdir(parents=True)
    assert main(["--preset", "digits", "--out", str(tmp_path / "run")]) == 2
    assert f"{tmp_path / 'run' / '.lock'} is a folder, where a lock file belongs" in _one_line_error(capsys)


def test_nbtools_odd_metadata_and_a_bad_out_are_one_line(tmp_path, capsys):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    from bgtutorial import nbtools

    odd = [({"bgtutorial": "yes"}, None, "metadata.bgtutorial is not"),
           ({"bgtutorial": {"executed": {"seconds": "a while"}}}, None, "metadata.bgtutorial is not"),
           ({}, {"bgtutorial": ["abc"]}, "cell 0: its metadata.bgtutorial is not"),
           ({}, {"bgtutorial": {"source_sha256": 7}}, "cell 0: its metadata.bgtutorial is not")]
    for i, (nb_meta, cell_meta, expect) in enumerate(odd):
        cell = new_code_cell("1")
        cell.metadata.update(cell_meta or {})
        nb = new_notebook(cells=[cell], metadata=nb_meta)
        path = tmp_path / f"odd{i}.ipynb"
        path.write_text(nbformat.writes(nb, version=4))
        for cmd in ("check", "strip", "execute"):
            assert nbtools._main([cmd, str(path)]) == 2
            err = _one_line_error(capsys)
            assert str(path) in err and expect in err
    (tmp_path / "afile").write_text("mine")
    for out, expect in ((tmp_path, "is a folder, not a .png file"), (tmp_path / "afile" / "f.png", "which is a file")):
        assert nbtools._main(["figure", str(tmp_path / "odd0.ipynb"), "tag", str(out)]) == 2
        assert expect in _one_line_error(capsys)
