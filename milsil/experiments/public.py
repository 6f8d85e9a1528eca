"""The paper's two public datasets, read in their published layouts.

* **CRC HistoPhenotypes** (Sirinukunwattana et al. 2016): ``imgN/imgN.bmp`` (500x500 H&E)
  beside ``imgN_epithelial.mat``, ``imgN_fibroblast.mat``, ``imgN_inflammatory.mat`` and
  ``imgN_others.mat``, each holding ``detection``: an ``[n, 2]`` array of nucleus centres
  ``(x, y)`` in MATLAB's 1-based pixels. The paper labels an image malignant when it holds
  epithelial (malignant) nuclei and uses the nuclei only for evaluation:
  :func:`crc_records` writes a mask of discs around the epithelial centres for the
  localization scores, never for training. :func:`crc_nuclei_bags` builds the bags of
  27x27 nucleus-centred patches for the attention-MIL "ADMP" baseline.
  The dataset does not say which of its 10 slides (9 patients) an image came from: a
  ``patients.csv`` (``image,patient``) in the root, or given explicitly, fixes that;
  without one :func:`crc_records` refuses (a patient on both sides of a split leaks),
  unless told to assume consecutive blocks of 10 images per slide.
* **CAMELYON16**: slides (``*.tif``) and ASAP XML lesion contours (``<slide>.xml``,
  anywhere under the root, e.g. ``lesion_annotations/``). :func:`prepare_camelyon16`
  takes the paper's 111 tumour + 20 normal training slides and samples 500x500 level-0
  tissue patches (malignant when a patch overlaps a contour, the paper's rule; 100,000 in
  all by default) into PNGs, masks and a ``manifest.csv`` that
  :func:`milsil.data.read_manifest` reads; one slide is one patient.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from milsil.data import BagRecord, read_manifest
from milsil.data.bags import write_manifest
from milsil.errors import MilsilError, NotFoundError

CRC_NUCLEI = ("epithelial", "fibroblast", "inflammatory", "others")
CLASS_NAMES = ["benign", "malignant"]


# --------------------------------------------------------------------------- CRC


def read_detections(path: Path) -> np.ndarray:
    """Nucleus centres ``float [n, 2]`` as 0-based ``(x, y)`` from a ``.mat`` ``detection``."""
    from scipy.io import loadmat

    try:
        data = loadmat(str(path))
    except Exception as exc:  # noqa: BLE001 - scipy raises several types for bad files
        raise MilsilError(f"{path.name}: not a readable MATLAB file: {exc}") from None
    if "detection" not in data:
        raise MilsilError(f"{path.name}: no 'detection' array (nucleus centres [n, 2])")
    det = np.asarray(data["detection"], dtype=np.float64)
    if det.size == 0:
        return np.zeros((0, 2))
    if det.ndim != 2 or det.shape[1] != 2:
        raise MilsilError(f"{path.name}: 'detection' must be [n, 2] (x, y), got {list(det.shape)}")
    return det - 1.0  # MATLAB pixels are 1-based


def _crc_images(root: Path) -> list[Path]:
    found = [p for p in root.rglob("*.bmp") if p.parent.name == p.stem]
    if not found:
        raise MilsilError(
            f"no CRC HistoPhenotypes images under {root}: expected imgN/imgN.bmp with "
            "imgN_epithelial.mat, _fibroblast.mat, _inflammatory.mat, _others.mat beside it"
        )

    def number(p: Path) -> tuple[int, str]:
        m = re.search(r"(\d+)$", p.stem)
        return (int(m.group(1)) if m else 0, p.stem)

    return sorted(found, key=number)


def crc_nuclei(image_path: Path) -> dict[str, np.ndarray]:
    """The four nucleus classes' centres of one CRC image (missing file = none)."""
    out = {}
    for kind in CRC_NUCLEI:
        mat = image_path.parent / f"{image_path.stem}_{kind}.mat"
        out[kind] = read_detections(mat) if mat.is_file() else np.zeros((0, 2))
    return out


def disc_mask(shape: tuple[int, int], centres: np.ndarray, radius: float) -> np.ndarray:
    """Discs of ``radius`` pixels around ``(x, y)`` centres: the evaluation mask."""
    h, w = shape
    mask = np.zeros(shape, dtype=bool)
    r = int(np.ceil(radius))
    off = np.arange(-r, r + 1)
    dy, dx = np.meshgrid(off, off, indexing="ij")
    disc = dy**2 + dx**2 <= radius**2
    for x, y in np.round(centres).astype(int):
        y0, y1, x0, x1 = y - r, y + r + 1, x - r, x + r + 1
        cy0, cx0 = max(0, -y0), max(0, -x0)
        sy0, sx0, sy1, sx1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
        if sy1 > sy0 and sx1 > sx0:
            mask[sy0:sy1, sx0:sx1] |= disc[cy0 : cy0 + sy1 - sy0, cx0 : cx0 + sx1 - sx0]
    return mask


CRC_LEAK = (
    "CRC HistoPhenotypes does not say which of its 10 slides (9 patients) each image comes "
    "from; without a patients table a patient's images can fall on both sides of a "
    "train/test split and leak into the test. Give ROOT/patients.csv or --patients-csv "
    "(columns image,patient), or pass --assume-slide-blocks to take consecutive blocks of 10 "
    "images (img1-10, img11-20, ...) as one slide each (an assumption, printed with the tables)"
)


def _crc_patients(
    images: list[Path], root: Path, patients: str | Path | None, assume_slide_blocks: bool
) -> tuple[dict[str, str], str]:
    table = Path(patients) if patients else root / "patients.csv"
    if table.is_file():
        with table.open(newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or not {"image", "patient"} <= set(rows[0]):
            raise MilsilError(f"{table}: needs columns image,patient (image = e.g. img12)")
        mapping = {Path(r["image"]).stem: r["patient"] for r in rows}
        missing = [p.stem for p in images if p.stem not in mapping]
        if missing:
            raise MilsilError(f"{table}: no patient for {', '.join(missing[:5])}")
        return mapping, f"patients from {table}"
    if patients:
        raise NotFoundError(f"patients table not found: {patients}")
    if not assume_slide_blocks:
        raise MilsilError(CRC_LEAK)
    mapping = {}
    for p in images:
        m = re.search(r"(\d+)$", p.stem)
        n = int(m.group(1)) if m else 1
        mapping[p.stem] = f"slide{(n - 1) // 10 + 1:02d}"
    return mapping, (
        "patients ASSUMED (--assume-slide-blocks): consecutive blocks of 10 images per slide, "
        "one slide per patient; the dataset does not record it, and the paper says 10 slides "
        "from 9 patients, so these 10 pseudo-patients are an assumption (two of them are one "
        "patient, who may fall on both sides of a split)"
    )


def crc_records(
    root: str | Path,
    cache_dir: str | Path,
    nucleus_radius: float = 5.0,
    patients: str | Path | None = None,
    assume_slide_blocks: bool = False,
) -> tuple[list[BagRecord], list[str], str]:
    """CRC HistoPhenotypes as bags: ``(records, ["benign", "malignant"], patient note)``.

    Malignant = the image has epithelial nuclei. Masks (discs of ``nucleus_radius`` around
    epithelial centres) are written to ``cache_dir/masks`` for localization only. Patients
    come from ``patients`` (default ``root/patients.csv``); without one this refuses
    (:data:`CRC_LEAK`) unless ``assume_slide_blocks``.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotFoundError(f"CRC root not found: {root}")
    images = _crc_images(root)
    mapping, note = _crc_patients(images, root, patients, assume_slide_blocks)
    masks = Path(cache_dir) / "masks"
    masks.mkdir(parents=True, exist_ok=True)
    records = []
    for path in images:
        nuclei = crc_nuclei(path)
        with Image.open(path) as img:
            w, h = img.size
        malignant = len(nuclei["epithelial"]) > 0
        mask_path = masks / f"{path.stem}.png"
        if not mask_path.is_file():
            mask = disc_mask((h, w), nuclei["epithelial"], nucleus_radius)
            Image.fromarray(mask).save(mask_path)
        records.append(
            BagRecord(
                str(path.resolve()), int(malignant), mapping[path.stem], str(mask_path.resolve())
            )
        )
    return records, list(CLASS_NAMES), note


def crc_nuclei_bags(
    records: Sequence[BagRecord], cache_dir: str | Path, patch: int = 27
) -> list[BagRecord]:
    """Bags of ``patch`` x ``patch`` crops centred on every annotated CRC nucleus (all four
    classes): the attention-MIL baseline trained on nucleus patches (ADMP)."""
    return nucleus_bags(
        records,
        lambda r: np.concatenate(list(crc_nuclei(Path(r.path)).values())),
        Path(cache_dir) / f"nuclei{patch}",
        patch,
    )


def nucleus_bags(
    records: Sequence[BagRecord],
    centres_of: Callable[[BagRecord], np.ndarray],
    out_dir: str | Path,
    patch: int = 27,
) -> list[BagRecord]:
    """Bags of ``patch`` x ``patch`` crops centred on nucleus centres, as ``.npz`` tiles.

    ``centres_of(record)``: ``float [n, 2]`` 0-based ``(x, y)`` pixel positions (the crop is
    centred on the pixel holding the centre; the image is mirrored at its borders). An image
    without nuclei gets one centre crop so every bag is non-empty. Tiles are cached.
    """
    from milsil.data import load_rgb

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    half = patch // 2
    bags = []
    for r in records:
        path = Path(r.path)
        target = out_dir / f"{path.stem}.npz"
        if not target.is_file():
            image = load_rgb(path)
            padded = np.pad(image, ((half, half), (half, half), (0, 0)), mode="reflect")
            centres = np.asarray(centres_of(r), dtype=np.float64).reshape(-1, 2)
            if len(centres) == 0:
                centres = np.array([[image.shape[1] / 2, image.shape[0] / 2]])
            tiles = []
            for x, y in np.floor(centres + 0.5).astype(int):
                x = int(np.clip(x, 0, image.shape[1] - 1))
                y = int(np.clip(y, 0, image.shape[0] - 1))
                tiles.append(padded[y : y + patch, x : x + patch])
            tmp = target.with_name(target.stem + ".tmp.npz")
            np.savez(tmp, tiles=np.stack(tiles).astype(np.uint8))
            tmp.replace(target)
        bags.append(BagRecord(str(target.resolve()), r.label, r.patient, None))
    return bags


def write_crc_like(
    root: str | Path, images: int = 20, size: int = 64, seed: int = 0, per_slide: int = 10
) -> Path:
    """A small dataset in the exact CRC HistoPhenotypes layout, drawn by :mod:`milsil.data.synth`.

    Malignant images' epithelial centres are the malignant nuclei's centroids; every image
    also gets fibroblast/inflammatory/other centres from its benign nuclei; ``patients.csv``
    puts ``per_slide`` consecutive images on one slide. For tests and demos.
    """
    from scipy import ndimage
    from scipy.io import savemat

    from milsil.data.synth import patient_style, synth_image

    root = Path(root)
    rng = np.random.default_rng(seed)
    styles = {}
    for n in range(1, images + 1):
        slide = (n - 1) // per_slide
        style = styles.setdefault(slide, patient_style(rng))
        malignant = bool(n % 2)
        rgb, mask = synth_image(rng, size, malignant, style=style)
        folder = root / "Classification" / f"img{n}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(folder / f"img{n}.bmp")
        labels, count = ndimage.label(mask)
        centres = np.array(ndimage.center_of_mass(mask, labels, range(1, count + 1))).reshape(-1, 2)
        epithelial = centres[:, ::-1] + 1.0  # (x, y), 1-based as MATLAB writes them
        dark = rgb.mean(axis=2) < np.percentile(rgb.mean(axis=2), 3)
        ys, xs = np.nonzero(dark & ~mask)
        pick = rng.choice(len(ys), size=min(len(ys), 9), replace=False) if len(ys) else []
        benign = (
            np.stack([xs[pick], ys[pick]], 1).astype(float) + 1.0 if len(ys) else np.zeros((0, 2))
        )
        parts = {
            "epithelial": epithelial if malignant else np.zeros((0, 2)),
            "fibroblast": benign[0::3],
            "inflammatory": benign[1::3],
            "others": benign[2::3],
        }
        for kind, det in parts.items():
            savemat(folder / f"img{n}_{kind}.mat", {"detection": det})
    with (root / "patients.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "patient"])
        writer.writerows(
            [[f"img{n}", f"slide{(n - 1) // per_slide + 1:02d}"] for n in range(1, images + 1)]
        )
    return root


# --------------------------------------------------------------------------- CAMELYON16


def _find_slides(root: Path, exclude: Path | None) -> list[Path]:
    from milsil.wsi.reader import SLIDE_SUFFIXES

    found = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.suffix.lower() not in SLIDE_SUFFIXES or p.suffix.lower() == ".dcm":
            continue
        if exclude is not None and exclude in p.resolve().parents:
            continue
        if p.stem.lower().endswith("_mask"):  # CAMELYON's rasterised masks are not slides
            continue
        found.append(p)
    return found


def select_camelyon16(
    slides: Sequence[Path], root: Path, tumour_slides: int | None, normal_slides: int | None
) -> tuple[list[Path], list[Path], list[str]]:
    """The paper's training slides: tumour slides (``tumor_*`` or with contours) and normal
    ones (``normal_*``), the first ``tumour_slides``/``normal_slides`` of each by name (None:
    all); other slides (e.g. ``test_*``) are left out. Returns both lists and notes."""
    from milsil.wsi.contours import find_contours

    tumour, normal, other = [], [], []
    for path in sorted(slides, key=lambda p: p.name):
        stem = path.stem.lower()
        if stem.startswith("tumor") or (
            not stem.startswith(("normal", "test")) and find_contours(path, [root])
        ):
            tumour.append(path)
        elif stem.startswith("normal") or not stem.startswith("test"):
            normal.append(path)
        else:
            other.append(path)
    notes = []
    for kind, found, wanted in (
        ("tumour", tumour, tumour_slides),
        ("normal", normal, normal_slides),
    ):
        if wanted is not None and len(found) < wanted:
            notes.append(f"only {len(found)} {kind} slides found (the paper: {wanted})")
    tumour = tumour[:tumour_slides] if tumour_slides is not None else tumour
    normal = normal[:normal_slides] if normal_slides is not None else normal
    if other:
        notes.append(
            f"{len(other)} other slides (e.g. {other[0].name}) left out: not training slides"
        )
    return tumour, normal, notes


def prepare_camelyon16(
    root: str | Path,
    out_dir: str | Path,
    patch: int = 500,
    max_patches_per_slide: int | None = None,
    total_patches: int = 100_000,
    tumour_slides: int | None = 111,
    normal_slides: int | None = 20,
    min_tissue: float = 0.5,
    seed: int = 0,
    log=print,
) -> tuple[Path, dict]:
    """Sample the paper's CAMELYON16 bags from the slides under ``root``.

    The paper: 111 tumour and 20 normal training slides, 500x500 level-0 patches, malignant
    where a patch overlaps the tumour contours, over 100,000 patches. The slides are
    :func:`select_camelyon16`'s (the first ``normal_slides`` normal ones by name: the
    paper does not say which 20); each gives up to ``max_patches_per_slide`` patches
    (default: ``total_patches`` spread evenly over the slides) on a grid of tissue patches
    (``min_tissue``), half malignant on tumour slides when they have enough
    (:func:`milsil.wsi.contours.sample_patches`).

    Writes ``out_dir/images/<slide>_<x>_<y>.png``, ``out_dir/masks/...png`` (the contours
    rasterised, for localization and per-instance labels only) and ``out_dir/manifest.csv``;
    returns the manifest and a summary (slides, quota, patches, notes). Slides already done
    with the same settings (``out_dir/done/<slide>.json``) are skipped, so an interrupted
    run resumes; a slide that cannot be read is reported and left out.
    """
    from milsil.wsi.contours import find_contours, rasterize, read_contours, sample_patches
    from milsil.wsi.reader import open_slide

    root, out = Path(root), Path(out_dir)
    if not root.is_dir():
        raise NotFoundError(f"CAMELYON16 root not found: {root}")
    found = _find_slides(root, out.resolve())
    if not found:
        raise MilsilError(f"no slides (*.tif, *.svs, ...) under {root}")
    tumour_list, normal_list, notes = select_camelyon16(found, root, tumour_slides, normal_slides)
    slides = tumour_list + normal_list
    if not slides:
        raise MilsilError(f"no CAMELYON16 training slides (tumor_*, normal_*) under {root}")
    quota = max_patches_per_slide or -(-int(total_patches) // len(slides))
    settings = {"patch": patch, "quota": quota, "min_tissue": min_tissue, "seed": seed}
    for sub in ("images", "masks", "done"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rows: list[list[str]] = []
    for k, path in enumerate(slides):
        done = out / "done" / f"{path.stem}.json"
        if done.is_file():
            state = json.loads(done.read_text())
            if isinstance(state, dict) and state.get("settings") == settings:
                rows.extend(state["rows"])
                continue
        try:
            contour_file = find_contours(path, [root])
            tumour = read_contours(contour_file) if contour_file else None
            slide_rows = []
            with open_slide(path) as s:
                patches = sample_patches(
                    s,
                    tumour,
                    size=patch,
                    max_patches=quota,
                    min_tissue=min_tissue,
                    seed=seed + k,
                )
                for p in patches:
                    stem = f"{path.stem}_{p.x}_{p.y}"
                    Image.fromarray(s.read(p.x, p.y, patch, patch)).save(
                        out / "images" / f"{stem}.png", compress_level=1
                    )
                    Image.fromarray(rasterize(tumour, p.x, p.y, patch, patch)).save(
                        out / "masks" / f"{stem}.png"
                    )
                    slide_rows.append(
                        [f"images/{stem}.png", CLASS_NAMES[p.label], path.stem, f"masks/{stem}.png"]
                    )
        except MilsilError as exc:
            notes.append(f"{path.name} skipped: {exc}")
            log(f"  skipped {path.name}: {exc}")
            continue
        done.write_text(json.dumps({"settings": settings, "rows": slide_rows}))
        rows.extend(slide_rows)
        n_pos = sum(r[1] == "malignant" for r in slide_rows)
        log(
            f"  {path.name}: {len(slide_rows)} patches ({n_pos} malignant), contours: {contour_file.name if contour_file else 'none'}"
        )
    if not rows:
        raise MilsilError(f"no tissue patches sampled from the slides under {root}")
    summary = {
        "tumour_slides": [p.stem for p in tumour_list],
        "normal_slides": [p.stem for p in normal_list],
        "quota_per_slide": quota,
        "target_patches": None if max_patches_per_slide else int(total_patches),
        "patches": len(rows),
        "malignant": sum(r[1] == "malignant" for r in rows),
        "notes": notes,
    }
    return write_manifest(out, rows), summary


def camelyon16_records(
    root: str | Path, out_dir: str | Path, **kwargs
) -> tuple[list[BagRecord], list[str], dict]:
    """:func:`prepare_camelyon16` then :func:`milsil.data.read_manifest`; the third value is
    the sampling summary."""
    manifest, summary = prepare_camelyon16(root, out_dir, **kwargs)
    records, names = read_manifest(manifest, CLASS_NAMES)
    return records, names, summary


def write_camelyon_like(
    root: str | Path,
    tumour_slides: int = 3,
    normal_slides: int = 2,
    size: tuple[int, int] = (512, 384),
    seed: int = 0,
) -> Path:
    """A tiny CAMELYON16 layout: ``training/tumor/tumor_00N.tif``, ``training/normal/...``
    and ``training/lesion_annotations/tumor_00N.xml`` (ASAP XML). For tests and demos."""
    from milsil.wsi.contours import write_asap_xml
    from milsil.wsi.synthetic import synthetic_slide

    root = Path(root)
    (root / "training" / "tumor").mkdir(parents=True, exist_ok=True)
    (root / "training" / "normal").mkdir(parents=True, exist_ok=True)
    (root / "training" / "lesion_annotations").mkdir(parents=True, exist_ok=True)
    w, h = size
    for i in range(1, tumour_slides + 1):
        _, rings = synthetic_slide(
            root / "training" / "tumor" / f"tumor_{i:03d}.tif",
            w,
            h,
            block=128,
            malignant_blocks=0.4,
            seed=seed * 100 + i,
        )
        write_asap_xml(root / "training" / "lesion_annotations" / f"tumor_{i:03d}.xml", rings)
    for i in range(1, normal_slides + 1):
        synthetic_slide(
            root / "training" / "normal" / f"normal_{i:03d}.tif",
            w,
            h,
            block=128,
            malignant_blocks=0.0,
            seed=seed * 100 + 50 + i,
        )
    return root
