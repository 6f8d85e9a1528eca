"""A torch ``Dataset`` of bags, and batching of bags that may differ in size.

Bags from images of different sizes hold different numbers of patches; a batch tensor
``[B, N, 3, p, p]`` needs one ``N``, so :func:`bucket_batches` groups bags of equal size
instead of padding with fake patches (which would shift the MIL mean).
"""

from __future__ import annotations

import zipfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from milsil.data.augment import hed_jitter, random_dihedral
from milsil.data.bags import BagRecord
from milsil.data.images import _check_patch_size, image_to_bag, load_mask, load_rgb, to_tensor
from milsil.data.stain import StainTransform, apply_stain, target_transform
from milsil.errors import MilsilError, NotFoundError
from milsil.models.stain import StainTarget


def _npz_tiles_shape(path: str) -> tuple[int, ...]:
    """Shape of ``tiles`` in a ``.npz`` without reading the pixels."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open("tiles.npy") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    except KeyError:
        raise MilsilError(
            f"{path} has no 'tiles' array (a bag .npz needs tiles uint8 [N,h,w,3])"
        ) from None
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise MilsilError(f"{path} is not a readable .npz file: {exc}") from None
    if dtype != np.uint8 or len(shape) != 4 or shape[3] != 3 or shape[0] < 1:
        raise MilsilError(
            f"{path}: 'tiles' must be uint8 [N, h, w, 3] with N >= 1, got {dtype} {list(shape)}"
        )
    return tuple(shape)


def load_npz_tiles(path: str | Path) -> np.ndarray:
    """Read a bag of tiles ``uint8 [N, h, w, 3]`` from a ``.npz`` (array ``tiles``)."""
    path = str(path)
    if not Path(path).is_file():
        raise NotFoundError(f"bag file not found: {path}")
    _npz_tiles_shape(path)
    with np.load(path, allow_pickle=False) as data:
        return np.ascontiguousarray(data["tiles"])


def _tiles_to_patches(tiles: np.ndarray, patch_size: int, path: str) -> np.ndarray:
    """Tiles of exactly the patch size are the patches; larger tiles are grid-cut like images."""
    if tiles.shape[1] == patch_size and tiles.shape[2] == patch_size:
        return tiles
    if tiles.shape[1] < patch_size or tiles.shape[2] < patch_size:
        raise MilsilError(
            f"{path}: tiles of {tiles.shape[2]}x{tiles.shape[1]} pixels are smaller than one "
            f"{patch_size}x{patch_size} patch"
        )
    return np.concatenate([image_to_bag(t, patch_size) for t in tiles])


def load_bag(record: BagRecord, patch_size: int) -> np.ndarray:
    """The record's bag as ``uint8 [N, p, p, 3]`` (an image grid-cut, or a ``.npz`` of tiles)."""
    if record.path.lower().endswith(".npz"):
        return _tiles_to_patches(load_npz_tiles(record.path), patch_size, record.path)
    try:
        return image_to_bag(load_rgb(record.path), patch_size)
    except MilsilError as exc:
        if "smaller than one" in str(exc):
            raise MilsilError(f"{record.path}: {exc}") from None
        raise


def instance_labels(
    record: BagRecord, patch_size: int, positive: int, negative: int
) -> np.ndarray | None:
    """Each patch's own label, in bag order: ``positive`` where the record's mask (the
    annotated malignant nuclei or tumour contours) has a pixel inside the patch, else
    ``negative``. A record without a mask: all ``negative`` when its bag is ``negative``,
    else unknown (None). The patches are :func:`load_bag`'s grid."""
    if not record.mask:
        if record.label == positive:
            return None
        return np.full(bag_size(record, patch_size), negative, dtype=np.int64)
    mask = load_mask(record.mask).astype(np.uint8)
    grid = image_to_bag(np.repeat(mask[..., None], 3, axis=2), patch_size)[..., 0]
    inside = grid.reshape(len(grid), -1).any(axis=1)
    return np.where(inside, positive, negative).astype(np.int64)


def bag_size(record: BagRecord, patch_size: int) -> int:
    """Number of patches in the record's bag, from the file header only (fast, no pixels)."""
    p = patch_size
    if record.path.lower().endswith(".npz"):
        n, h, w, _ = _npz_tiles_shape(record.path)
        if h < p or w < p:
            raise MilsilError(
                f"{record.path}: tiles of {w}x{h} pixels are smaller than one {p}x{p} patch"
            )
        return n * (h // p) * (w // p)
    if not Path(record.path).is_file():
        raise NotFoundError(f"image not found: {record.path}")
    try:
        with Image.open(record.path) as img:
            w, h = img.size
    except Exception as exc:  # Pillow raises many types for bad files
        raise MilsilError(f"image {record.path} is not a readable image: {exc}") from None
    if h < p or w < p:
        raise MilsilError(
            f"{record.path}: image of {w}x{h} pixels is smaller than one {p}x{p} patch; "
            f"use a smaller patch size"
        )
    return (h // p) * (w // p)


class BagDataset(Dataset):
    """Bags for training/evaluation: item ``i`` -> ``(float32 [N, 3, p, p] normalised, label)``.

    With ``augment`` each patch gets its own random flip/90-degree rotation, and with
    ``color_jitter > 0`` the bag's stains are jittered together (see :mod:`.augment`).
    With ``stain`` (a model's target) each bag is first stain-normalized, its source stain
    estimated from all its patches once (:mod:`.stain`).
    Random draws depend on ``(seed, epoch, index, visit)`` (visits counted within the
    epoch): reproducible, different every epoch. Call :meth:`set_epoch` each epoch, or index
    with ``(epoch, index)`` pairs, which is what lets persistent DataLoader workers (whose
    copies never see ``set_epoch``) draw the same as the main process would.
    Bag sizes are read from file headers at construction, so an unreadable or too small
    image fails before training starts.
    """

    def __init__(
        self,
        records: Sequence[BagRecord],
        patch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: bool = False,
        color_jitter: float = 0.0,
        seed: int = 0,
        stain: StainTarget | None = None,
    ) -> None:
        self.records = list(records)
        if not self.records:
            raise MilsilError("a dataset needs at least one bag; got none")
        self.patch_size = _check_patch_size(patch_size)
        if len(mean) != 3 or len(std) != 3 or any(float(s) <= 0 for s in std):
            raise MilsilError("normalisation needs 3 means and 3 positive standard deviations")
        if not 0.0 <= float(color_jitter) <= 1.0:
            raise MilsilError(f"color_jitter must be from 0 to 1, got {color_jitter!r}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.augment = bool(augment)
        self.color_jitter = float(color_jitter)
        self.seed = int(seed)
        self.stain = stain
        self._stains: dict[int, StainTransform | None] = {}  # per bag, estimated once
        self.epoch = 0
        self._visits = [0] * len(self.records)
        self.bag_sizes = [bag_size(r, self.patch_size) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.records]

    def set_epoch(self, epoch: int) -> None:
        """Make augmentation differ per epoch; visits count from zero in each epoch, so
        epoch ``e`` draws the same whether or not earlier epochs ran in this process."""
        if int(epoch) != self.epoch:
            self.epoch = int(epoch)
            self._visits = [0] * len(self.records)

    def load_pixels(self, index: int) -> np.ndarray:
        """The bag as ``uint8 [N, p, p, 3]``, augmented if the dataset augments."""
        bag = load_bag(self.records[index], self.patch_size)
        if self.stain is not None:  # before augmenting: the jitter stays a jitter
            if index not in self._stains:
                where = f"training bag {self.records[index].path}"
                self._stains[index] = target_transform(self.stain, bag, where)
            bag = apply_stain(bag, self._stains[index])
        if self.augment or self.color_jitter > 0:
            rng = np.random.default_rng([self.seed, self.epoch, index, self._visits[index]])
            self._visits[index] += 1
            if self.augment:
                bag = random_dihedral(bag, rng)
            if self.color_jitter > 0:
                bag = hed_jitter(bag, rng, self.color_jitter)
        return bag

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        if isinstance(index, tuple):
            epoch, index = index
            self.set_epoch(epoch)
        if not 0 <= index < len(self.records):
            raise IndexError(index)
        return to_tensor(self.load_pixels(index), self.mean, self.std), self.records[index].label


def bucket_batches(
    bag_sizes: Sequence[int], batch_size: int, shuffle: bool, seed: int = 0
) -> list[list[int]]:
    """Batches of dataset indices whose bags have equal size; use as a DataLoader ``batch_sampler``.

    With ``shuffle`` the order inside each size group and the order of the batches are
    random (by ``seed``; pass ``seed + epoch`` for a new order each epoch); without it
    batches follow the index order. The last batch of a group may be smaller.
    """
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise MilsilError(f"batch_size must be a positive integer, got {batch_size!r}")
    groups: dict[int, list[int]] = defaultdict(list)
    for i, n in enumerate(bag_sizes):
        groups[int(n)].append(i)
    rng = np.random.default_rng(seed)
    batches = []
    for n in sorted(groups):
        idx = groups[n]
        if shuffle:
            idx = [idx[j] for j in rng.permutation(len(idx))]
        batches.extend(idx[s : s + batch_size] for s in range(0, len(idx), batch_size))
    if shuffle:
        batches = [batches[j] for j in rng.permutation(len(batches))]
    else:
        batches.sort(key=lambda b: b[0])
    return batches


def collate_bags(items: Sequence[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(bag [N,3,p,p], label)`` items into ``(bags [B,N,3,p,p], labels int64 [B])``."""
    if not items:
        raise MilsilError("cannot collate an empty batch")
    sizes = {tuple(bag.shape) for bag, _ in items}
    if len(sizes) != 1:
        raise MilsilError(
            f"bags in one batch must have the same shape, got {sorted(sizes)}; "
            f"batch with bucket_batches (or batch size 1)"
        )
    bags = torch.stack([bag for bag, _ in items])
    labels = torch.tensor([int(label) for _, label in items], dtype=torch.long)
    return bags, labels
