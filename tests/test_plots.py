"""Figures name the classes: the glyphs' characters, CUB's species, or the label number."""
import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402

from bgtutorial.plots import class_name, embedding_projection, retrieval_gallery  # noqa: E402


class _Named:
    def __init__(self, classes, n_per_class=3):
        self.classes = classes
        self.targets = [c for c in range(len(classes)) for _ in range(n_per_class)]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return torch.full((3, 8, 8), self.targets[i] / len(self.classes)), self.targets[i]


def test_class_name_reads_the_dataset():
    assert class_name(_Named(["Ж", "ա"]), 1) == "ա"
    assert class_name(_Named(["002.Laysan_Albatross"]), 0) == "Laysan Albatross"
    assert class_name(_Named(["100.Brown_Pelican_with_a_long_name"]), 0, width=10) == "Brown Pel…"
    assert class_name(object(), 7) == "7"


def test_gallery_titles_and_projection_labels_are_the_class_names():
    ds = _Named(["Ж", "ա", "ß"])
    labels = torch.tensor(ds.targets)
    emb = torch.nn.functional.normalize(torch.randn(len(ds), 4, generator=torch.Generator().manual_seed(0)), dim=1)
    fig = retrieval_gallery(ds, emb, labels, queries=[0], k=2)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[0] == "query Ж" and all(t.split()[0] in ds.classes for t in titles[1:])
    fig = embedding_projection(emb, labels, names=ds.classes)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["Ж", "ա", "ß"]
    many = _Named([chr(0x410 + i) for i in range(12)], n_per_class=2)
    emb = torch.randn(len(many), 4, generator=torch.Generator().manual_seed(1))
    fig = embedding_projection(emb, torch.tensor(many.targets), names=many.classes)
    assert sorted(t.get_text() for t in fig.axes[0].texts) == sorted(many.classes)
