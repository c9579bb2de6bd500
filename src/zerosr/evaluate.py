"""Measure a trained model on a test set, as training validation does.

    python -m zerosr.evaluate MODEL --hr HR [--lr LR] [--json] [--save DIR] [--tile N] [--metrics psnr,ssim,lpips,dists]

PSNR and SSIM on the Y channel with `scale` border pixels cropped, LPIPS and DISTS on the whole
RGB image, per image and as the mean, beside MATLAB-bicubic upscaling. `--metrics` picks them;
by default a run directory's own `train.val_metrics`, else psnr, ssim, lpips and dists (their
networks' weights come through `zerosr.pretrained`). Without --lr the LR images are made from HR by the same
MATLAB-style bicubic as training. The images, the scores and the forward are validation's own
(`engine.validation`, `engine.tiling`), in fp32 as validation runs, so a run's best model scores
here what its validation logged for the same images.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from zerosr.errors import UserError


def _images(folder: Path, key: str) -> list[Path]:
    from zerosr.data.pairing import list_images

    return [folder] if folder.is_file() else list_images(folder, key)


def _pairs(hr: Path, lr: Path | None, scale: int) -> list[tuple[Path, Path | None]]:
    """(HR, LR or None) pairs; LR of another scale than the model's is refused in one line."""
    from zerosr.data.pairing import pair_images

    if lr is None:
        return [(path, None) for path in _images(hr, "--hr")]
    if hr.is_file() != lr.is_file():
        raise UserError("--hr and --lr must both be folders or both be image files")
    if hr.is_file():
        _check_scale((hr, lr), scale)
        return [(hr, lr)]
    _check_scale(_first_pair(hr, lr), scale)
    return pair_images(hr, lr, scale, "--hr", "--lr")


def _first_pair(hr: Path, lr: Path) -> tuple[Path, Path] | None:
    """The LR partner of the first HR that has one (same name, or a `x<scale>` suffix)."""
    hr_files, lr_files = _images(hr, "--hr"), _images(lr, "--lr")
    by_stem = {p.relative_to(lr).with_suffix("").as_posix(): p for p in lr_files}
    for path in hr_files:
        stem = path.relative_to(hr).with_suffix("").as_posix()
        for candidate, partner in by_stem.items():
            if candidate == stem or (candidate.startswith(stem + "x") and candidate[len(stem) + 1 :].isdigit()):
                return path, partner
    return None


def _check_scale(pair: tuple[Path, Path] | None, scale: int) -> None:
    from PIL import Image

    if pair is None:
        return  # nothing pairs up: pair_images names the unmatched files
    try:
        with Image.open(pair[0]) as hr_image, Image.open(pair[1]) as lr_image:
            (hr_w, hr_h), (lr_w, lr_h) = hr_image.size, lr_image.size
    except OSError:
        return  # unreadable: the dataset reports it with its own message
    ratio = hr_w / lr_w
    if round(ratio) != scale and abs(hr_h / lr_h - ratio) < 0.1 * ratio:
        raise UserError(
            f"the model is x{scale}, but the pairs are about x{ratio:.3g} ({pair[0].name}: HR {hr_w}x{hr_h}, "
            f"LR {lr_w}x{lr_h}): use a x{round(ratio)} model, or LR images made for x{scale}"
        )


def evaluate(pairs: list, scale: int, upscaler, save: Path | None, hr_root: Path, scorer=None) -> list[dict]:
    """Per-image scores (`scorer`'s metrics, PSNR/SSIM by default) of the model and of bicubic;
    writes SR images and strips under `save`."""
    from zerosr.data.datasets import PairedImageDataset
    from zerosr.engine.validation import bicubic_upscale, validation_items
    from zerosr.metrics.scorer import Scorer
    from zerosr.report.images import save_comparison, save_image

    scorer = scorer or Scorer()
    dataset = PairedImageDataset(pairs, scale)
    rows = []
    for index, _, lq, gt in validation_items(dataset, scale):
        sr = upscaler.upscale_tensor(lq)
        model = scorer(sr[0], gt[0], scale)
        bicubic = scorer(bicubic_upscale(lq, scale)[0], gt[0], scale)
        source = pairs[index][0]
        name = source.stem if hr_root.is_file() else source.relative_to(hr_root).with_suffix("").as_posix()
        rows.append({"image": name, **model, **{f"bicubic_{k}": v for k, v in bicubic.items()}})
        if save is not None:
            save_image(sr[0], save / f"{name}_sr.png")
            save_comparison(lq[0], sr[0], gt[0], save / f"{name}_compare.png", scale)
    return rows


def _mean(rows: list[dict]) -> dict:
    return {key: sum(row[key] for row in rows) / len(rows) for key in rows[0] if key != "image"}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None  # identical images: PSNR is infinite


def table(rows: list[dict], mean: dict) -> str:
    from zerosr.metrics.catalog import METRICS

    width = max(len("mean"), *(len(row["image"]) for row in rows))
    names = [n for n in METRICS if n in mean]
    columns = [(n, METRICS[n].label) for n in names] + [(f"bicubic_{n}", f"bicubic {METRICS[n].label}") for n in names]
    widths = [max(len(label), 7) for _, label in columns]
    lines = [f"{'image':<{width}}  " + "  ".join(f"{label:>{w}}" for (_, label), w in zip(columns, widths))]
    for row in [*rows, {"image": "mean", **mean}]:
        if row["image"] == "mean":
            lines.append("-" * len(lines[0]))
        cells = [f"{row[key]:>{w}{'.2f' if key.endswith('psnr') else '.4f'}}" for (key, _), w in zip(columns, widths)]
        lines.append(f"{row['image']:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def _metric_names(given: str | None, model: Path) -> list[str]:
    """--metrics, else a run directory's train.val_metrics, else all but LPIPS-VGG; PSNR and SSIM always."""
    from zerosr.metrics.catalog import check_names, computed

    if given:
        names = check_names([n.strip() for n in given.split(",") if n.strip()], "--metrics")
    elif (model / "resolved_config.yaml").is_file():
        import yaml

        train = (yaml.safe_load((model / "resolved_config.yaml").read_text()) or {}).get("train") or {}
        names = check_names(train.get("val_metrics") or [], "the run's train.val_metrics")
        names.append(str(train.get("select_metric") or "psnr"))
    else:
        names = ["lpips", "dists"]
    return computed(names, "psnr")


def run(args: argparse.Namespace) -> int:
    from zerosr.inference import Upscaler, check_writable, load_model, pick_accelerator, resolve_model_path

    hr = Path(args.hr)
    lr = Path(args.lr) if args.lr else None
    if args.tile is not None and args.tile < 0:
        raise UserError(f"--tile {args.tile}: give a tile size in LR pixels, or 0 for whole images")
    for path, flag in ((hr, "--hr"), (lr, "--lr")):
        if path is not None and not path.exists():
            raise UserError(f"{flag} {path} does not exist: give a folder of images")
    save = Path(args.save) if args.save else None
    if save is not None and hr.is_dir() and save.resolve().is_relative_to(hr.resolve()):
        raise UserError(f"--save {save} is inside --hr {hr}: its images would count as test images next "
                        "time; choose a folder outside it")
    if save is not None:
        check_writable(save, "--save")
    accelerator = pick_accelerator()
    weights = resolve_model_path(args.model)
    model = load_model(weights, accelerator.device)
    scale = int(model.scale)
    pairs = _pairs(hr, lr, scale)
    upscaler = Upscaler(model, accelerator, tile=args.tile, low_precision=False)  # fp32, as validation
    from zerosr.metrics.scorer import Scorer

    scorer = Scorer(_metric_names(args.metrics, Path(args.model)), accelerator.device)
    rows = evaluate(pairs, scale, upscaler, save, hr, scorer)
    mean = _mean(rows)
    if args.json:
        report = {"model": str(weights), "arch": model.arch_name, "scale": scale,
                  "lr": "given" if lr is not None else "bicubic from HR", "crop_border": scale, "channel": "Y",
                  "images": [{k: _finite(v) if isinstance(v, float) else v for k, v in row.items()} for row in rows],
                  "mean": {k: _finite(v) for k, v in mean.items()}}
        print(json.dumps(report, indent=2))
    else:
        print(table(rows, mean))
        made = "given LR" if lr is not None else "LR made from HR by MATLAB-style bicubic"
        print(f"{weights} ({model.arch_name} x{scale}) on {len(rows)} image{'s' * (len(rows) != 1)}, {made}; "
              f"Y channel, {scale} border pixels cropped")
        if save is not None:
            print(f"SR images and bicubic | SR | HR strips in {save}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zerosr.evaluate",
        description="PSNR/SSIM/LPIPS/DISTS of a trained model on HR (and optional LR) images, beside bicubic.",
    )
    parser.add_argument("model", help="weights (.safetensors from zerosr, traiNNer .pth) or a run directory")
    parser.add_argument("--hr", required=True, help="folder of HR (ground truth) images, read recursively")
    parser.add_argument("--lr", help="folder of matching LR images (default: bicubic from HR, as training)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--save", help="write the SR images and bicubic | SR | HR strips to this folder")
    parser.add_argument("--metrics", help="comma-separated, from psnr, ssim, lpips, lpips_vgg, dists (default: a "
                        "run directory's train.val_metrics, else psnr,ssim,lpips,dists)")
    parser.add_argument("--tile", type=int, help="tile size in LR pixels (default: from free memory; 0: whole images)")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
