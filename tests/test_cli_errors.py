"""Bad options: a one-line message that says what to do, and exit code 2 from every CLI."""
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
