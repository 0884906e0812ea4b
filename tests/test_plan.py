"""The study plan: every arm of the declared family at every seed, resumable, sharded, evaluated only where
the studies read, published as each run finishes."""
import json

import pytest

from bgtutorial import plan
from bgtutorial.claims import FAMILY, Arm, plan_arms
from bgtutorial.plan import Job, plan_jobs, run_job


def test_the_plan_covers_every_claim_at_every_seed_with_distinct_folders_and_names():
    jobs = plan_jobs("runs/study", seeds=(0, 1, 2, 3, 4))
    assert len(jobs) == 5 * len(plan_arms())
    assert len({j.folder for j in jobs}) == len(jobs) and len({j.stem() for j in jobs}) == len(jobs)
    needed = {(arm, s) for claim in FAMILY for arm in claim.arms() for s in range(5)}
    assert needed <= {(j.arm, j.seed) for j in jobs}
    # the folders are those python -m bgtutorial.experiments trains the same runs into
    lam1 = next(j for j in jobs if j.arm == Arm("bgformer", variant=(("module_kwargs", (("lam", 1.0),)),)) and j.seed == 2)
    assert lam1.folder == "runs/study/lam1/glyphs-bgformer-noise0-seed2" and lam1.stem() == "glyphs-bgformer-noise0-seed2-lam1"
    with pytest.raises(ValueError, match="distinct"):
        plan_jobs("runs", seeds=(0, 0))


def test_shards_split_the_plan_without_overlap(capsys, tmp_path):
    seen = []
    for i in range(3):
        assert plan.main(["--runs", str(tmp_path), "--seeds", "0", "1", "--dry-run", "--shard", f"{i}/3"]) == 0
        seen += [line.split()[1] for line in capsys.readouterr().out.splitlines()[1:]]
    assert sorted(seen) == sorted(j.stem() for j in plan_jobs(tmp_path, seeds=(0, 1)))
    with pytest.raises(SystemExit) as err:
        plan.main(["--shard", "3/3", "--dry-run"])
    assert err.value.code == 2
    assert plan.main(["--workers", "0", "--dry-run"]) == 2


def test_a_run_is_evaluated_at_epoch_0_and_last_then_published_and_loaded_again(tmp_path):
    arms = [Arm("baseline"), Arm("batchformer")]
    jobs = plan_jobs(tmp_path / "runs", seeds=(0,), preset="smoke", arms=arms)
    assert [j.state() for j in jobs] == ["todo", "todo"]
    dest = tmp_path / "published"
    out = [run_job(j, str(dest), "python -m bgtutorial.plan (test)", threads=1) for j in jobs]
    assert [j.state() for j in jobs] == ["done", "done"]
    for job, (name, r1, _) in zip(jobs, out):
        h = json.loads((dest / f"{name}.json").read_text())
        assert h["epochs"][-1]["R@1"] == r1
        assert "R@1" not in h["epochs"][0] and len(h["epochs"]) == h["config"]["epochs"] == 2   # no mid-run eval
        assert h["initial"] is not None and h["published"]["command"].startswith("python -m bgtutorial.plan")
        assert h["backbone_weights"] is None and h["device_name"].startswith("cpu")
    base, bf = (json.loads((dest / f"{n}.json").read_text()) for n, _, _ in out)
    assert base["initial"] == bf["initial"]                    # paired: the same head at epoch 0
    again = run_job(jobs[0], None, "", threads=1)              # loaded, not trained again
    assert again[1] == out[0][1] and again[2] < out[0][2]
