"""Training data: image I/O, HR/LR pairing, bicubic LR, patch datasets and the demo dataset."""

from zerosr.data.datasets import PairedImageDataset, PairedPatchDataset, PatchDataset, seed_worker
from zerosr.data.degrade import bicubic_downscale
from zerosr.data.demo import ensure_demo_dataset
from zerosr.data.io import IMAGE_EXTENSIONS, read_image, write_image
from zerosr.data.pairing import list_images, pair_images
from zerosr.data.split import split_validation

__all__ = [
    "IMAGE_EXTENSIONS",
    "PairedImageDataset",
    "PairedPatchDataset",
    "PatchDataset",
    "bicubic_downscale",
    "ensure_demo_dataset",
    "list_images",
    "pair_images",
    "read_image",
    "seed_worker",
    "split_validation",
    "write_image",
]
