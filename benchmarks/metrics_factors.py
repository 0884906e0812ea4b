"""What moves the ratio of our ``recall_at_k`` to pytorch-metric-learning's AccuracyCalculator:
the data, k, the threads and our query chunk, one factor at a time, in one run.

Each setting times three contenders in interleaved rounds (``_common.interleaved``): our
``recall_at_k`` (search + label checks), faiss's exact search alone (``IndexFlatL2``, what
AccuracyCalculator builds) and AccuracyCalculator itself (``precision_at_1``), and prints the
medians and two ratios, ours / AccuracyCalculator (also round by round: the two calls of a round
ran one after the other) and ours / faiss's search. The first row is the
reference setting (the data of ``metrics_speed.py``, k = 8, the libraries' default threads, our
default chunk); every other row changes one factor.

Data kinds (N samples of D dimensions, 100 classes, seeded):

* ``blobs, normalised``: ``normalize(g + 0.3 c_y)`` with g, c ~ N(0, I): ``metrics_speed.py``'s data;
* ``blobs, raw``: ``normalize(g) + 0.3 c_y``, not normalised again (norms about 7 at D = 512): the
  data of issue 23's rerun;
* ``noise``: ``normalize(g)``, labels drawn independently (no structure at all).

    .venv/bin/python benchmarks/metrics_factors.py [--n 12000] [--dim 512] [--rounds 3]
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import add_args, header, interleaved, load_average, ratio, threads  # noqa: E402

from bgtutorial.metrics import recall_at_k  # noqa: E402


def make_data(kind: str, n: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings (N, D) float32 and labels (N,) of one of the kinds in the module docstring."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 100, (n,), generator=g)
    noise = torch.randn(n, dim, generator=g)                                   # (N, D)
    centres = torch.randn(100, dim, generator=g)                               # (100, D)
    if kind == "blobs, normalised":
        return torch.nn.functional.normalize(noise + 0.3 * centres[y], dim=1), y
    if kind == "blobs, raw":
        return torch.nn.functional.normalize(noise, dim=1) + 0.3 * centres[y], y
    if kind == "noise":
        return torch.nn.functional.normalize(noise, dim=1), y
    raise ValueError(f"unknown data kind {kind!r}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=12_000)
    p.add_argument("--dim", type=int, default=512)
    add_args(p, rounds=3)
    a = p.parse_args()
    import faiss
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from threadpoolctl import threadpool_limits

    default_threads = torch.get_num_threads()
    reference = {"data": "blobs, normalised", "k": 8, "threads": default_threads, "chunk": 4096}
    settings = [reference,
                {**reference, "data": "blobs, raw"},
                {**reference, "data": "noise"},
                {**reference, "data": "blobs, raw", "k": 1},
                {**reference, "data": "blobs, raw", "k": 59},
                {**reference, "data": "blobs, raw", "threads": 1},
                {**reference, "data": "blobs, raw", "chunk": 1024}]
    header(f"ours / AccuracyCalculator by factor, N={a.n}, D={a.dim}, faiss {faiss.__version__}", a.rounds, a.warmup)
    print("| data | k | threads | our chunk | ours s | faiss search s | AccuracyCalculator s | ours / AccuracyCalculator "
          "| the same, round by round | ours / faiss search | AccuracyCalculator - faiss search s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    data = {}
    for s in settings:
        if s["data"] not in data:
            data[s["data"]] = make_data(s["data"], a.n, a.dim)
        x, y = data[s["data"]]
        xn, k = x.numpy(), s["k"]

        def ours():
            return recall_at_k(x, y, ks=(1, 2, 4, k) if k > 4 else (k,), chunk_size=s["chunk"])

        def faiss_search():
            index = faiss.IndexFlatL2(a.dim)
            index.add(xn)
            return index.search(xn, k + 1)

        def calculator():
            calc = AccuracyCalculator(include=("precision_at_1",), k=k)
            return calc.get_accuracy(x, y, ref_includes_query=True)["precision_at_1"]

        torch.set_num_threads(s["threads"])
        faiss.omp_set_num_threads(s["threads"])
        with threadpool_limits(s["threads"]):
            r1 = (ours()[1] if k > 4 else None, calculator())
            if r1[0] is not None:
                assert abs(r1[0] - r1[1]) < 1e-3, f"Recall@1 must agree: {r1}"
            t = interleaved({"ours": ours, "faiss": faiss_search, "calculator": calculator}, a.rounds, a.warmup)
        m = {name: timing.median for name, timing in t.items()}
        paired = " ".join(f"{a / b:.2f}" for a, b in zip(t["ours"].times, t["calculator"].times))   # same round
        print(f"| {s['data']} | {k} | {threads(s['threads'])} | {s['chunk']} | {m['ours']:.2f} | {m['faiss']:.2f} | "
              f"{m['calculator']:.2f} | {ratio(m['ours'] / m['calculator'])} | {paired} | "
              f"{ratio(m['ours'] / m['faiss'])} | {m['calculator'] - m['faiss']:.2f} |", flush=True)
    torch.set_num_threads(default_threads)
    print(f"load average at the end (1, 5, 15 min): {load_average()}")


if __name__ == "__main__":
    main()
