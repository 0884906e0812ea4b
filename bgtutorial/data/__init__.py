"""Data sets, their splits and their batches.

* :mod:`~bgtutorial.data.cub_archive` (download, MD5, safe extraction) and :mod:`~bgtutorial.data.cub`
  (parsing, protocols, transforms, :class:`CUB200`): CUB-200-2011; :mod:`~bgtutorial.data.fake_cub`
  builds a synthetic archive in its layout.
* :mod:`~bgtutorial.data.glyph_classes` (which characters, in which faces) and
  :mod:`~bgtutorial.data.glyphs` (rendering, cache, :class:`GlyphsRetrieval`): the embedded default;
  :mod:`~bgtutorial.data.corpus`: the glyph backbone's pretraining characters.
* :mod:`~bgtutorial.data.digits`: scikit-learn's handwritten digits.
* :mod:`~bgtutorial.data.splits` (a config's train/validation/test sets) and
  :mod:`~bgtutorial.data.perturb` (label noise, corrupted images, long tail, subsets).
* :mod:`~bgtutorial.data.sampler`: m-per-class and random batches, replayable from (seed, epoch).
"""
import warnings

from .cub import CUB200, eval_transform, train_transform
from .cub_archive import CUBDataError, download_cub
from .digits import DigitsRetrieval
from .glyphs import GlyphsRetrieval
from .fake_cub import fake_cub_url, make_fake_cub
from .sampler import MPerClassBatchSampler, RandomBatchSampler

__all__ = ["CUB200", "CUBDataError", "download_cub", "train_transform", "eval_transform",
           "GlyphsRetrieval", "DigitsRetrieval", "make_fake_cub", "fake_cub_url", "MPerClassBatchSampler", "RandomBatchSampler"]


# ``python -m bgtutorial.data.cub`` runs a module this package has just imported; runpy's warning
# about that is noise on the CLI's stderr (the module keeps no state a second copy could split)
warnings.filterwarnings("ignore", message=r"'bgtutorial\.data\.cub' found in sys\.modules", category=RuntimeWarning)
