"""Data: CUB-200-2011 (download, verify, parse), the embedded glyphs default, the digits, synthetic archives, samplers."""
import warnings

from .cub import CUB200, CUBDataError, download_cub, eval_transform, train_transform
from .digits import DigitsRetrieval
from .glyphs import GlyphsRetrieval
from .fake_cub import fake_cub_url, make_fake_cub
from .sampler import MPerClassBatchSampler, RandomBatchSampler

__all__ = ["CUB200", "CUBDataError", "download_cub", "train_transform", "eval_transform",
           "GlyphsRetrieval", "DigitsRetrieval", "make_fake_cub", "fake_cub_url", "MPerClassBatchSampler", "RandomBatchSampler"]


# ``python -m bgtutorial.data.cub`` runs a module this package has just imported; runpy's warning
# about that is noise on the CLI's stderr (the module keeps no state a second copy could split)
warnings.filterwarnings("ignore", message=r"'bgtutorial\.data\.cub' found in sys\.modules", category=RuntimeWarning)
