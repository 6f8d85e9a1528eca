"""Data: images and masks, bags of patches, datasets, patient-level splits, augmentation.

Everything a model consumes passes through here, so the layout (uint8 HxWx3 pixels,
row-major exhaustive patch grids, ImageNet-style normalisation) is defined once.
"""

from milsil.data.augment import hed_jitter, random_dihedral
from milsil.data.bags import (
    BagRecord,
    class_order,
    load_dataset,
    patient_kfold,
    patient_split,
    read_manifest,
    scan_folder,
)
from milsil.data.dataset import (
    BagDataset,
    bag_size,
    bucket_batches,
    collate_bags,
    load_bag,
    load_npz_tiles,
)
from milsil.data.images import (
    image_to_bag,
    load_mask,
    load_rgb,
    patch_origins,
    shrink,
    to_tensor,
)

__all__ = [
    "BagDataset",
    "BagRecord",
    "bag_size",
    "bucket_batches",
    "class_order",
    "collate_bags",
    "hed_jitter",
    "image_to_bag",
    "load_bag",
    "load_dataset",
    "load_mask",
    "load_npz_tiles",
    "load_rgb",
    "patch_origins",
    "shrink",
    "patient_kfold",
    "patient_split",
    "random_dihedral",
    "read_manifest",
    "scan_folder",
    "to_tensor",
]
