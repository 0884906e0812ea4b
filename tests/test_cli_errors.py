"""Bad options: a one-line message that says what to do, and exit code 2 from every CLI."""
import pytest
import torch

from bgtutorial import demo, experiments
from bgtutorial.train import load_config, main
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
