"""Recall@K on 12,000 x 512: bgtutorial's chunked exact kNN against faiss's exact search (alone and
inside pytorch-metric-learning's AccuracyCalculator) and scikit-learn's NearestNeighbors,
interleaved over several rounds (see ``_common.py``), then where our own time goes.

    .venv/bin/python benchmarks/metrics_speed.py [--n 12000] [--dim 512] [--rounds 7]
"""
import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "5")    # torch.profiler: no "gpuGetDeviceCount failed" line on CPU
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _common import add_args, header, interleaved, print_table, set_threads, threads  # noqa: E402

from bgtutorial.metrics import knn, recall_at_k  # noqa: E402

KS = (1, 2, 4, 8)


def profile_knn(x: torch.Tensor, y: torch.Tensor, runs: int) -> dict[str, float]:
    """Seconds per ``recall_at_k`` call spent in each ATen operator (self time, torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    recall_at_k(x, y, ks=KS)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            recall_at_k(x, y, ks=KS)
    out: dict[str, float] = defaultdict(float)
    for ev in prof.key_averages():
        out[ev.key] += ev.self_cpu_time_total / 1e6 / runs
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=12_000)
    p.add_argument("--dim", type=int, default=512)
    add_args(p, rounds=7)
    a = p.parse_args()
    set_threads(a.threads)
    import faiss
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from sklearn.neighbors import NearestNeighbors
    from threadpoolctl import threadpool_limits

    if a.threads > 0:
        threadpool_limits(a.threads)          # faiss's OpenMP and every BLAS, like torch's threads

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 100, (a.n,), generator=g)
    x = torch.nn.functional.normalize(torch.randn(a.n, a.dim, generator=g) + 0.3 * torch.randn(100, a.dim, generator=g)[y], dim=1)
    xn = x.numpy()
    kmax = max(KS)

    def ours():
        return recall_at_k(x, y, ks=KS)

    def ours_knn():
        return knn(x, kmax)

    def faiss_flat():                 # what AccuracyCalculator runs: IndexFlatL2, k + 1 (the query finds itself)
        index = faiss.IndexFlatL2(a.dim)
        index.add(xn)
        return index.search(xn, kmax + 1)[1]

    def pml():
        calc = AccuracyCalculator(include=("precision_at_1",), k=kmax)
        return calc.get_accuracy(x, y, ref_includes_query=True)["precision_at_1"]

    def sklearn_nn():
        nn = NearestNeighbors(n_neighbors=kmax + 1).fit(xn)
        idx = nn.kneighbors(xn, return_distance=False)[:, 1:]
        return float((y[torch.as_tensor(idx[:, 0])] == y).float().mean())

    nn_ours, nn_faiss = ours_knn(), torch.as_tensor(faiss_flat())
    hit = (y[nn_ours[:, 0]] == y).float()                              # (N,) our nearest neighbour's class is right
    not_lone = (y.bincount()[y] > 1)                                   # AccuracyCalculator leaves out lone queries
    r1 = {"ours": ours()[1], "ours without lone queries": float(hit[not_lone].mean()),
          "pytorch-metric-learning (faiss)": pml(), "scikit-learn": sklearn_nn()}
    assert abs(r1["ours"] - r1["scikit-learn"]) < 1e-3 and \
        abs(r1["ours without lone queries"] - r1["pytorch-metric-learning (faiss)"]) < 1e-3, \
        f"the three must agree on Recall@1: {r1}"
    same_first = float((nn_ours[:, 0] == nn_faiss[:, 1]).float().mean())   # faiss's column 0 is the query

    names = {"bgtutorial recall_at_k (search + label checks)": ours,
             "bgtutorial knn alone (k=8)": ours_knn,
             "faiss IndexFlatL2 search alone (k=9)": faiss_flat,
             "pytorch-metric-learning AccuracyCalculator (faiss)": pml,
             "scikit-learn NearestNeighbors": sklearn_nn}
    header(f"Recall@K, N={a.n}, D={a.dim}, faiss {faiss.__version__}, {threads(faiss.omp_get_max_threads())}",
           a.rounds, a.warmup)
    print("Recall@1: " + ", ".join(f"{k} {v:.5f}" for k, v in r1.items())
          + f" (agree within 1e-3); nearest neighbour identical to faiss's for {same_first:.2%} of queries")
    timings = interleaved(names, a.rounds, a.warmup)
    print_table(timings, "bgtutorial recall_at_k (search + label checks)", label="implementation")

    runs = 3
    ops = profile_knn(x, y, runs)
    total = sum(ops.values())
    groups = {"matrix product (aten::mm)": ["aten::mm"],
              "norms added in place (aten::add_)": ["aten::add_"],
              "top-k (aten::topk)": ["aten::topk"],
              "self-match masked (aten::fill_)": ["aten::fill_"],
              "exact and search spaces: float64 copy, scaling, centring (aten::copy_, mul, sub, aminmax)":
                  ["aten::copy_", "aten::_to_copy", "aten::mul", "aten::sub", "aten::aminmax"],
              "near-ties settled by exact distance (aten::index, cumsum, sort, argsort, gather)":
                  ["aten::index", "aten::cumsum", "aten::sort", "aten::argsort", "aten::gather"]}
    print(f"\nwhere recall_at_k's time goes (torch.profiler, self CPU time, mean of {runs} calls; "
          f"the profiler's total {total:.3f} s)")
    print("| part | seconds | share |")
    print("|---|---|---|")
    rest = total
    for label, keys in groups.items():
        t = sum(ops.get(k, 0.0) for k in keys)
        rest -= t
        print(f"| {label} | {t:.3f} | {t / total:.1%} |")
    print(f"| everything else (finiteness checks, tie flags, label checks, ...) | {rest:.3f} | {rest / total:.1%} |")


if __name__ == "__main__":
    main()
