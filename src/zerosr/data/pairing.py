"""Match HR (gt) and LR (lq) files by name.

A pair shares its path relative to its folder, without extension: HR `a/x.png` pairs with LR
`a/x.png` or `a/x.jpg`, and also with the DIV2K/traiNNer naming `a/x{scale}` such as `0001x2.png`.
Every file must find exactly one partner: a silently dropped or mismatched pair costs quality
without any sign, so unmatched files are an error that names a few of them.
"""

from __future__ import annotations

from pathlib import Path

from zerosr.data.io import IMAGE_EXTENSIONS, is_image_file
from zerosr.errors import UserError

_EXAMPLES = 3


def list_images(folder: str | Path, config_key: str = "data.gt_path") -> list[Path]:
    """All image files under `folder` (recursively), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise UserError(f"{config_key}: '{folder}' {what}; set {config_key}=DIR to a folder of images")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
    if not files:
        raise UserError(
            f"{config_key}: folder '{folder}' has no images ({' '.join(IMAGE_EXTENSIONS)}); "
            f"put images there or set {config_key}=DIR to another folder"
        )
    return files


def _stem_key(path: Path, root: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


def _index_by_stem(files: list[Path], root: Path, config_key: str) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for path in files:
        key = _stem_key(path, root)
        if key in index:
            raise UserError(
                f"{config_key}: '{index[key]}' and '{path}' have the same name; keep one of them"
            )
        index[key] = path
    return index


def _examples(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_EXAMPLES])
    return shown + (", ..." if len(names) > _EXAMPLES else "")


def pair_images(
    gt_dir: str | Path,
    lq_dir: str | Path,
    scale: int,
    gt_key: str = "data.gt_path",
    lq_key: str = "data.lq_path",
) -> list[tuple[Path, Path]]:
    """Pairs (gt_path, lq_path) sorted by HR path. `gt_key`/`lq_key` name the settings in errors."""
    gt_dir, lq_dir = Path(gt_dir), Path(lq_dir)
    gt_files = list_images(gt_dir, gt_key)
    lq_index = _index_by_stem(list_images(lq_dir, lq_key), lq_dir, lq_key)
    suffix = f"x{scale}"

    pairs: list[tuple[Path, Path]] = []
    missing: list[str] = []
    used: set[str] = set()
    for gt_path in gt_files:
        key = _stem_key(gt_path, gt_dir)
        found = [k for k in (key, key + suffix) if k in lq_index]
        if len(found) == 2:
            raise UserError(
                f"{lq_key}: both '{lq_index[found[0]]}' and '{lq_index[found[1]]}' match HR "
                f"'{gt_path}'; keep one of them"
            )
        if not found:
            missing.append(gt_path.relative_to(gt_dir).as_posix())
            continue
        used.add(found[0])
        pairs.append((gt_path, lq_index[found[0]]))

    if missing:
        raise UserError(
            f"{len(missing)} of {len(gt_files)} HR images in '{gt_dir}' have no LR image in '{lq_dir}' "
            f"({_examples(missing)}; an LR file must share the HR name, or add '{suffix}' to it): "
            f"add the LR files, remove those HR files, or drop {lq_key} to make LR by bicubic downscaling"
        )
    orphans = sorted(lq_index[k].relative_to(lq_dir).as_posix() for k in lq_index.keys() - used)
    if orphans:
        raise UserError(
            f"{len(orphans)} LR images in '{lq_dir}' have no HR image in '{gt_dir}' "
            f"({_examples(orphans)}): remove them or add the HR files"
        )
    return pairs
