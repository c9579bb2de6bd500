"""Preflight: check a run's data in seconds, before any training, and say what to fix.

Runs from `train.py` right after the config checks, and alone as `python -m zerosr.doctor` with
the same overrides. It reads headers, not pixels: sizes and modes come from Pillow's lazy
`Image.open`, PNG bit depth from the IHDR chunk, and a truncated PNG or JPEG is recognised by its
missing end marker (IEND / EOI), which OpenCV would otherwise decode as a partly grey image.
Files Pillow cannot identify (e.g. some 16-bit TIFFs) are decoded by OpenCV as the loader would.

Fatal problems (missing or empty folders, files that are not images or are truncated, HR/LR names
that do not pair, duplicate names, LR sizes that are not HR/scale, images smaller than the training
patch, a pretrain file of another variant, a resume state that fails its checksum) are one
`error:` line each, naming the file and the fix; the run then stops with exit code 2. What the
loader fixes by itself (grayscale, alpha, CMYK and palette images become RGB; 16-bit is kept at full
precision) is one `warning:` line per kind, with the count and an example.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig
from PIL import Image

from zerosr.archs.spec import CUSTOM
from zerosr.data.io import IMAGE_EXTENSIONS, is_image_file
from zerosr.errors import UserError

MAX_LISTED_ERRORS = 20  # more than this are counted, not listed

_GRAY_MODES = ("1", "L", "I", "F", "I;16", "I;16B", "I;16L", "I;16N")
_CONVERSIONS = {
    "grayscale": "grayscale images become RGB (the channel is repeated)",
    "alpha": "images with an alpha channel become RGB (alpha is dropped)",
    "cmyk": "CMYK images become RGB (converted by the decoder)",
    "palette": "palette images become RGB",
    "16-bit": "16-bit images are used at full precision",
}


@dataclass
class ImageInfo:
    width: int
    height: int
    kinds: tuple[str, ...] = ()  # keys of _CONVERSIONS that apply


@dataclass
class Report:
    images: int = 0
    pairs: int = 0
    errors: list[str] = field(default_factory=list)
    notes: dict[str, list[Path]] = field(default_factory=lambda: defaultdict(list))  # kind -> files
    ignored: dict[Path, list[Path]] = field(default_factory=lambda: defaultdict(list))  # folder -> files
    seconds: float = 0.0

    def warnings(self) -> list[str]:
        lines = []
        for folder, files in self.ignored.items():
            lines.append(f"{len(files)} files in '{folder}' are not images ({' '.join(IMAGE_EXTENSIONS)}) and are "
                         f"ignored, e.g. '{files[0].name}'")
        for kind, files in self.notes.items():
            lines.append(f"{len(files)} {_CONVERSIONS[kind]}, e.g. '{files[0]}'")
        return lines

    def summary(self) -> str:
        return (f"preflight    {self.images} images, {self.pairs} pairs checked in {self.seconds:.1f} s: "
                f"{len(self.warnings())} warnings, {len(self.errors)} errors")


# --------------------------------------------------------------------------- one image


def inspect_image(path: Path) -> ImageInfo:
    """Size and what the loader will convert, from the header; UserError if not a usable image."""
    try:
        size = path.stat().st_size
    except OSError as err:
        raise UserError(f"'{path}': cannot be read ({err.strerror}): check the file's permissions") from None
    if size == 0:
        raise UserError(f"'{path}' is empty (0 bytes): re-export it or remove it")
    with open(path, "rb") as f:
        head = f.read(32)
        f.seek(max(0, size - 1024))
        tail = f.read()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                mode, fmt, info = image.mode, image.format, dict(image.info)
    except Image.DecompressionBombError:
        raise UserError(f"'{path}' is too large to train on: cut it into tiles") from None
    except OSError:  # PIL.UnidentifiedImageError included: let OpenCV, the real decoder, try
        return _inspect_by_decoding(path)
    png_ends = fmt == "PNG" and tail.rstrip(b"\0").endswith(b"IEND\xaeB`\x82")
    jpeg_ends = fmt in ("JPEG", "MPO") and b"\xff\xd9" in tail
    if fmt in ("PNG", "JPEG", "MPO") and not (png_ends or jpeg_ends):
        # No end marker at the end: truncated, or data appended after it (a phone's "motion photo",
        # metadata tools). The real decoder decides, for these files only.
        _decodes_whole(path, fmt)
    kinds = []
    if mode in _GRAY_MODES or mode == "LA":
        kinds.append("grayscale")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in info):
        kinds.append("alpha")
    if mode == "CMYK":
        kinds.append("cmyk")
    if mode in ("P", "PA"):
        kinds.append("palette")
    png_16 = fmt == "PNG" and head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) > 24 and head[24] == 16
    if png_16 or mode.startswith("I;16"):
        kinds.append("16-bit")
    return ImageInfo(width, height, tuple(kinds))


def _decodes_whole(path: Path, fmt: str) -> None:
    """UserError unless OpenCV decodes every pixel row of `path` (it fails on a truncated file)."""
    try:
        _inspect_by_decoding(path)
    except UserError:
        raise UserError(f"'{path}' is a truncated {fmt} (no end marker, cannot be decoded): re-export it or "
                        "remove it") from None


def _inspect_by_decoding(path: Path) -> ImageInfo:
    from zerosr.data.io import read_image_raw

    try:
        image = read_image_raw(path)
    except UserError:
        raise UserError(f"'{path}' is not an image or is corrupt (it cannot be decoded): re-export it as PNG "
                        "or remove it") from None
    return ImageInfo(image.shape[1], image.shape[0], ("16-bit",) if image.dtype.itemsize == 2 else ())


# --------------------------------------------------------------------------- folders and pairs


def _list_folder(folder: str | Path, key: str, report: Report) -> list[Path] | None:
    folder = Path(folder)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        report.errors.append(f"{key}: '{folder}' {what}; set {key}=DIR to a folder of images")
        return None
    images, others = [], []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        (images if is_image_file(path) else others).append(path)
    if others:
        report.ignored[folder] = others
    if not images:
        report.errors.append(f"{key}: folder '{folder}' has no images ({' '.join(IMAGE_EXTENSIONS)}); put images "
                             f"there or set {key}=DIR to another folder")
        return None
    return images


def _by_stem(files: list[Path], root: Path, key: str, report: Report) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for path in files:
        stem = path.relative_to(root).with_suffix("").as_posix()
        if stem in index:
            report.errors.append(f"{key}: '{index[stem]}' and '{path}' have the same name; keep one of them")
            continue
        index[stem] = path
    return index


def _inspect_all(files: list[Path], report: Report) -> dict[Path, ImageInfo]:
    infos = {}
    for path in files:
        report.images += 1
        try:
            info = inspect_image(path)
        except UserError as err:
            report.errors.append(str(err))
            continue
        for kind in info.kinds:
            report.notes[kind].append(path)
        infos[path] = info
    return infos


def check_pairs(gt_dir, lq_dir, scale: int, report: Report, gt_key: str = "data.gt_path",
                lq_key: str = "data.lq_path") -> list[tuple[Path, Path | None, tuple[int, int]]]:
    """Check one HR folder (with its LR folder, or bicubic LR when `lq_dir` is None).

    Returns (hr, lr or None, LR size (w, h)) for every pair whose files are usable."""
    gt_files = _list_folder(gt_dir, gt_key, report)
    lq_files = _list_folder(lq_dir, lq_key, report) if lq_dir is not None else []
    if gt_files is None or lq_files is None:
        return []
    gt_dir = Path(gt_dir)
    gt_index = _by_stem(gt_files, gt_dir, gt_key, report)
    infos = _inspect_all(gt_files + lq_files, report)
    pairs = []
    if lq_dir is None:
        for gt in gt_index.values():
            if gt in infos:
                w, h = infos[gt].width // scale, infos[gt].height // scale
                if w == 0 or h == 0:
                    report.errors.append(f"HR image '{gt}' ({infos[gt].width}x{infos[gt].height}) is smaller than "
                                         f"the scale {scale}: remove it")
                    continue
                pairs.append((gt, None, (w, h)))
        report.pairs += len(pairs)
        return pairs

    lq_dir = Path(lq_dir)
    lq_index = _by_stem(lq_files, lq_dir, lq_key, report)
    suffix, used = f"x{scale}", set()
    for stem, gt in gt_index.items():
        found = [k for k in (stem, stem + suffix) if k in lq_index]
        if len(found) == 2:
            report.errors.append(f"{lq_key}: both '{lq_index[found[0]]}' and '{lq_index[found[1]]}' match HR "
                                 f"'{gt}'; keep one of them")
            used.update(found)
            continue
        if not found:
            report.errors.append(f"HR '{gt}' has no LR image in '{lq_dir}': add '{stem}.png' (or '{stem}{suffix}.png') "
                                 f"there, remove the HR file, or drop {lq_key} to make LR by bicubic downscaling")
            continue
        used.add(found[0])
        lq = lq_index[found[0]]
        if gt not in infos or lq not in infos:
            continue  # already reported as unreadable
        g, q = infos[gt], infos[lq]
        # An HR up to scale-1 pixels larger is cropped ("mod crop"), as the loader does.
        if not (0 <= g.height - q.height * scale < scale and 0 <= g.width - q.width * scale < scale):
            report.errors.append(
                f"LR '{lq}' is {q.width}x{q.height} but HR '{gt}' is {g.width}x{g.height}: at scale={scale} the LR "
                f"must be {g.width // scale}x{g.height // scale}; fix the scale setting or re-make the LR image")
            continue
        pairs.append((gt, lq, (q.width, q.height)))
    for stem in sorted(lq_index.keys() - used):
        report.errors.append(f"LR '{lq_index[stem]}' has no HR image in '{gt_dir}': remove it or add the HR file")
    report.pairs += len(pairs)
    return pairs


def _check_patch(pairs, lq_size: int, report: Report) -> None:
    for gt, lq, (w, h) in pairs:
        if w < lq_size or h < lq_size:
            report.errors.append(
                f"'{lq or gt}' is {w}x{h} LR pixels, smaller than the training patch train.lq_size={lq_size}: "
                f"lower train.lq_size to {min(w, h)} or less, or remove that image")


# --------------------------------------------------------------------------- a whole run


def _data_folders(cfg: DictConfig) -> tuple[tuple, tuple | None]:
    """(train folders, val folders or None) as (gt, lq, gt_key, lq_key), as the run will read them."""
    data = cfg.data
    if data.name == "demo" and data.gt_path is None:
        from zerosr.data.demo import ensure_demo_dataset
        from zerosr.engine.data import cache_dir

        folders = ensure_demo_dataset(cache_dir() / f"demo_x{cfg.scale}", scale=cfg.scale)
        return ((folders["train_gt"], folders["train_lq"], "demo train HR", "demo train LR"),
                (folders["val_gt"], folders["val_lq"], "demo val HR", "demo val LR"))
    if not data.gt_path:
        raise UserError("data.gt_path is not set: give your HR folder, data.gt_path=PATH/TO/HR")
    train = (data.gt_path, data.lq_path, "data.gt_path", "data.lq_path")
    val = None
    if data.val_gt_path:
        val = (data.val_gt_path, data.val_lq_path, "data.val_gt_path", "data.val_lq_path")
    return train, val


def _check_network(cfg: DictConfig) -> None:
    """arch=custom: the user's class imports, takes `scale`, builds with arch.params and maps an
    LR patch to scale x its size; a built-in option with other arch.params builds with them and
    runs such a patch. Anything else is one line (raised: no run can start without it)."""
    if cfg.arch.name != CUSTOM:
        if cfg.arch.get("_target_") is not None:
            raise UserError(f"arch._target_ names your own network, which needs arch=custom (not arch={cfg.arch.name}): "
                            f"add arch=custom or drop arch._target_")
        _check_own_params(cfg)
        return
    from zerosr.archs.custom import check_contract
    from zerosr.archs.spec import build

    check_contract(build(CUSTOM, int(cfg.scale), cfg.arch.get("_target_"), **cfg.arch.params), int(cfg.scale))


def _check_own_params(cfg: DictConfig) -> None:
    """A built-in option whose arch.params differ from its file's: built, and one LR patch run."""
    import torch
    from omegaconf import OmegaConf

    from zerosr.archs.custom import CHECK_SIZE
    from zerosr.archs.spec import build, changed_params, is_reshaped

    option, scale = cfg.arch.name, int(cfg.scale)
    params = OmegaConf.to_container(cfg.arch.params, resolve=True)
    if not is_reshaped(option, params):
        return
    model = build(option, scale, None, **params).eval()
    try:
        with torch.no_grad():
            model(torch.rand(1, 3, CHECK_SIZE, CHECK_SIZE))
    except Exception as exc:  # noqa: BLE001 - any failure of the forward is the parameters'
        raise UserError(f"{option} with {changed_params(option, params)} fails on a (1, 3, {CHECK_SIZE}, {CHECK_SIZE}) "
                        f"LR patch ({type(exc).__name__}: {' '.join(str(exc).split())[:120]}): "
                        f"fix arch.params") from None


def _check_weights(cfg: DictConfig, report: Report) -> None:
    """train.pretrain: readable safely and of this run's network; train.resume=PATH: a valid state."""
    train = cfg.train
    if train.pretrain:
        from zerosr import archs

        try:
            # The trainer's own reader (Trainer._load_pretrain): what passes here loads there.
            archs.read_weights(train.pretrain, cfg.arch.name, int(cfg.scale), label=f"train.pretrain={train.pretrain}",
                               target=cfg.arch.get("_target_"))
        except UserError as err:
            report.errors.append(str(err))
    from zerosr.engine import distributed

    resume = train.resume
    # Under torchrun only rank 0 reads the state (it shares it), so other nodes need no copy of it.
    if distributed.is_main() and resume is not None and str(resume).strip().lower() not in (
            "", "none", "false", "auto"):
        from zerosr.engine.checkpoint import find_resume_state, verify_state_file

        try:
            path = find_resume_state(str(resume), Path("."), Path("outputs"), str(cfg.name))
            verify_state_file(path)
        except UserError as err:
            report.errors.append(f"train.resume={resume}: {err}" if "train.resume" not in str(err) else str(err))


def check_run(cfg: DictConfig) -> Report:
    """Every check for this run's config; returns the report (nothing printed)."""
    from zerosr.data.split import split_validation

    started = time.perf_counter()
    _check_network(cfg)
    report = Report()
    train_folders, val_folders = _data_folders(cfg)
    scale, lq_size = int(cfg.scale), int(cfg.train.lq_size)
    pairs = check_pairs(*train_folders[:2], scale, report, *train_folders[2:])
    if val_folders is not None:
        check_pairs(*val_folders[:2], scale, report, *val_folders[2:])
    elif pairs and not report.errors:
        # The held-out pairs are chosen exactly as the run will choose them; they need no patch size.
        try:
            pairs, _ = split_validation(pairs, max(1, cfg.data.n_val), seed=cfg.train.seed)
        except UserError as err:
            report.errors.append(str(err))
    _check_patch(pairs, lq_size, report)
    if cfg.data.get("target_path"):  # data=realistic calibration: a folder of images is all it needs
        from zerosr.data.pairing import list_images

        try:
            list_images(cfg.data.target_path, "data.target_path")
        except UserError as err:
            report.errors.append(str(err))
    _check_weights(cfg, report)
    report.seconds = time.perf_counter() - started
    return report


def preflight(cfg: DictConfig, stream=None) -> Report:
    """Check, print warnings, errors and the counts; raise UserError if anything is fatal."""
    stream = stream or sys.stderr
    report = check_run(cfg)
    for line in report.warnings():
        print(f"warning: {line}", file=stream)
    for line in report.errors[:MAX_LISTED_ERRORS]:
        print(f"error: {line}", file=stream)
    if len(report.errors) > MAX_LISTED_ERRORS:
        print(f"error: ... and {len(report.errors) - MAX_LISTED_ERRORS} more problems like these", file=stream)
    print(report.summary(), flush=True)
    if report.errors:
        count = len(report.errors)
        raise UserError(f"preflight found {count} problem{'s' if count > 1 else ''} in the data (listed above): "
                        "fix them and run again; python -m zerosr.doctor with the same overrides re-checks in seconds")
    return report

