"""Recall@K on 12,000 x 512: bgtutorial's chunked exact kNN vs pytorch-metric-learning (faiss)
and scikit-learn's NearestNeighbors, as ratios measured in one run.

    .venv/bin/python benchmarks/metrics_speed.py [--n 12000] [--dim 512]
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import best_time, machine  # noqa: E402

from bgtutorial.metrics import recall_at_k  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=12_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 100, (a.n,), generator=g)
    x = torch.nn.functional.normalize(torch.randn(a.n, a.dim, generator=g) + 0.3 * torch.randn(100, a.dim, generator=g)[y], dim=1)

    def ours():
        return recall_at_k(x, y, ks=(1, 2, 4, 8))

    def pml():
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
        calc = AccuracyCalculator(include=("precision_at_1",), k=8)
        return calc.get_accuracy(x, y, ref_includes_query=True)["precision_at_1"]

    def sklearn_nn():
        from sklearn.neighbors import NearestNeighbors
        nn = NearestNeighbors(n_neighbors=9).fit(x.numpy())
        idx = nn.kneighbors(x.numpy(), return_distance=False)[:, 1:]
        return float((y[torch.as_tensor(idx[:, 0])] == y).float().mean())

    r1 = ours()[1]
    assert abs(r1 - pml()) < 1e-3 and abs(r1 - sklearn_nn()) < 1e-3, "the three must agree on Recall@1"
    rows = [("bgtutorial recall_at_k (chunked matmul)", best_time(ours, a.repeat)),
            ("pytorch-metric-learning AccuracyCalculator (faiss)", best_time(pml, a.repeat)),
            ("scikit-learn NearestNeighbors", best_time(sklearn_nn, a.repeat))]
    base = rows[0][1]
    print(f"Recall@K, N={a.n}, D={a.dim}, Recall@1={r1:.4f} (all three agree)")
    print(f"machine: {machine()}")
    print(f"| {'implementation':52s} | {'seconds':>8s} | {'ratio to ours':>13s} |")
    print(f"|{'-' * 54}|{'-' * 10}|{'-' * 15}|")
    for name, t in rows:
        print(f"| {name:52s} | {t:8.3f} | {t / base:13.2f} |")


if __name__ == "__main__":
    main()
