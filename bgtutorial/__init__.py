"""bgtutorial: tested, readable BatchFormer and BGFormer for CUB-200-2011 retrieval.

Public names (kept short): the batch modules, the network, the metrics' entry point,
and the device/seed helpers. Everything else lives in its submodule
(``bgtutorial.config``, ``bgtutorial.train``, ``bgtutorial.evaluate``, ``bgtutorial.data``,
``bgtutorial.plots``, ...; README.md's "The package" maps them).
"""
from .batchformer import BatchFormer
from .bgformer import BGFormer
from .metrics import recall_at_k, retrieval_metrics
from .models import RetrievalNet
from .utils import device, seed_everything, smoke_mode

__all__ = ["BatchFormer", "BGFormer", "RetrievalNet", "recall_at_k", "retrieval_metrics", "device", "seed_everything",
           "smoke_mode"]
__version__ = "0.1.0"
