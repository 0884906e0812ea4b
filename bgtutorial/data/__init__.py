"""Data: CUB-200-2011 (download, verify, parse), the embedded glyphs default, the digits, synthetic archives, samplers."""
from .cub import CUB200, CUBDataError, download_cub, eval_transform, train_transform
from .digits import DigitsRetrieval
from .glyphs import GlyphsRetrieval
from .fake_cub import fake_cub_url, make_fake_cub
from .sampler import MPerClassBatchSampler, RandomBatchSampler

__all__ = ["CUB200", "CUBDataError", "download_cub", "train_transform", "eval_transform",
           "GlyphsRetrieval", "DigitsRetrieval", "make_fake_cub", "fake_cub_url", "MPerClassBatchSampler", "RandomBatchSampler"]
