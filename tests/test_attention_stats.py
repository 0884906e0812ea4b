"""Attention readouts (own-class share, sink share, self share) against hand computations, and the
calibration against untrained modules on a tiny trained run."""
import pytest
import torch

from bgtutorial import attention_stats
from bgtutorial.attention_stats import attention_readout, calibrate
from bgtutorial.batchformer import BatchFormerLayer


def test_uniform_attention_reads_its_chance_values():
    B, m = 12, 3
    y = torch.arange(B // m).repeat_interleave(m)
    r = attention_readout(torch.full((B, B), 1 / B), y, m)
    assert r == pytest.approx({"within": m / B, "sink": m / B, "self": 1 / B})


def test_a_single_sink_and_pure_class_attention_by_hand():
    B, m = 8, 2
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    sink = torch.zeros(B, B)
    sink[:, 5] = 1.0                                   # every row reads sample 5 only
    r = attention_readout(sink, y, m)
    # rows 4 and 5 (class 2) read their own class, the other 6 rows do not: within = 2/8
    assert r["within"] == pytest.approx(2 / 8) and r["sink"] == pytest.approx(1.0) and r["self"] == pytest.approx(1 / 8)
    own = torch.zeros(B, B)
    for i in range(B):
        for j in range(B):
            if y[i] == y[j]:
                own[i, j] = 1 / m
    r = attention_readout(torch.stack([own, own]), y, m)          # (H, B, B): heads averaged first
    assert r["within"] == pytest.approx(1.0) and r["sink"] == pytest.approx(m / B) and r["self"] == pytest.approx(1 / m)
    with pytest.raises(ValueError, match="B labels"):
        attention_readout(own, y[:-1], m)


def test_calibrate_reads_the_trained_layer_and_seeded_untrained_ones():
    torch.manual_seed(0)
    feats, y = torch.randn(8, 16), torch.arange(4).repeat_interleave(2)
    trained = BatchFormerLayer(16, 2).eval()
    res = calibrate(lambda: BatchFormerLayer(16, 2), trained, [(feats, y), (feats * 2, y)], m=2, untrained_seeds=(3, 4))
    assert len(res["trained"]["sink"]) == 2 and len(res["untrained"]["sink"]) == 4
    with torch.no_grad():
        assert res["trained"]["within"][0] == pytest.approx(attention_readout(trained.attention_weights(feats), y, 2)["within"])
        torch.manual_seed(4)
        again = BatchFormerLayer(16, 2).eval()
        assert res["untrained"]["sink"][1] == pytest.approx(attention_readout(again.attention_weights(feats), y, 2)["sink"])


def test_the_command_reads_trained_runs_or_says_what_is_missing(tmp_path, capsys):
    from bgtutorial.config import load_config
    from bgtutorial.train import train

    run = tmp_path / "digits-batchformer-noise0-seed0"
    train(load_config("digits-batchformer", out=str(run), views=1, epochs=1, batch_size=20, m=4, steps_per_epoch=2,
                      eval_nmi=False, progress=False, embed_dim=16))
    assert attention_stats.main(["--runs", str(tmp_path), "--preset", "digits", "--seeds", "0", "--batches", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("| 0 | within |") == 1 and out.count("| 0 | sink |") == 1
    assert attention_stats.main(["--runs", str(tmp_path), "--preset", "digits", "--seeds", "1"]) == 2
    assert "holds no finished run" in capsys.readouterr().err
