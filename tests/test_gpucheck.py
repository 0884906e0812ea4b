"""make gpu-check: refuses a CPU with a clear message, and its code path runs at toy sizes."""
import json

import torch

from bgtutorial import gpucheck


def test_gpu_check_says_it_needs_a_gpu(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpucheck.main([]) == 1
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_gpu_check_path_runs_on_cpu_at_toy_size(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "rows.json"
    assert gpucheck.main(["--allow-cpu", "--tiers", "cub-resnet50", "--methods", "bgformer", "--steps", "2",
                          "--data_root", str(tmp_path / "data"), "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["preset"] == "cub-resnet50-bgformer" and row["steps"] == 2
    assert row["images_per_s"] > 0 and row["step_ms"] > 0
    assert 0 < row["module_ms"] and row["share"] == row["module_ms"] / row["step_ms"]
    assert row["largest_batch"] is None and row["peak_gib"] is None        # GPU-only figures
