"""Upscale your images with a trained model.

    python -m zerosr.upscale MODEL INPUT OUTPUT [--tile N] [--overwrite] [--format png|jpg|webp] [--quality Q]

MODEL is a weights file (.safetensors from zerosr, or a traiNNer .pth) or a run directory (its
models/best.safetensors). INPUT is an image or a folder, read recursively; OUTPUT mirrors its
folder tree. Each output keeps the input's format unless --format says otherwise, and its bit depth
(16-bit PNG/TIFF stay 16-bit; JPEG and WebP hold 8 bits), grayscale and alpha. A file that cannot
be read or written gets one `error:` line and the others go on; the exit code is then 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zerosr.errors import UserError

FORMATS = {"png": ".png", "jpg": ".jpg", "webp": ".webp"}
WRITE_ADVICE = "(choose an OUTPUT folder you may write to, with free space)"


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def plan(source: Path, output: Path, fmt: str | None) -> tuple[list[Job], int]:
    """(jobs, files that are not images) for INPUT -> OUTPUT; a bad pairing is a UserError."""
    from zerosr.data.io import IMAGE_EXTENSIONS, is_image_file

    extension = FORMATS[fmt] if fmt else None
    if not source.exists():
        raise UserError(f"INPUT {source} does not exist: give an image or a folder of images")
    if source.is_file():
        if output.suffix.lower() in IMAGE_EXTENSIONS and not output.is_dir():
            if extension and output.suffix.lower() not in (extension, ".jpeg" if fmt == "jpg" else extension):
                raise UserError(f"OUTPUT {output.name} is not a {fmt} file name: drop --format or name it *{extension}")
            target = output
        else:
            target = output / (source.stem + (extension or source.suffix))
        if target.resolve() == source.resolve():
            raise UserError(f"OUTPUT {target} is the input image itself: write the result somewhere else")
        return [Job(source, target)], 0

    if output.exists() and not output.is_dir():
        raise UserError(f"INPUT {source} is a folder, so OUTPUT must be a folder too, but {output} is a file")
    if _is_within(output, source):
        raise UserError(f"OUTPUT {output} is inside INPUT {source}: the results would be read as inputs next "
                        "time; choose an OUTPUT folder outside it")
    files = sorted(p for p in source.rglob("*") if p.is_file())
    images = [p for p in files if is_image_file(p)]
    if not images:
        raise UserError(f"INPUT folder {source} holds no images ({' '.join(IMAGE_EXTENSIONS)})")
    jobs, seen = [], {}
    for path in images:
        relative = path.relative_to(source)
        target = output / relative.with_suffix(extension or path.suffix)
        if target in seen:
            raise UserError(f"{seen[target]} and {path} would both be written to {target}: rename one, "
                            "or leave --format out to keep each file's format")
        seen[target] = path
        jobs.append(Job(path, target))
    return jobs, len(files) - len(images)


def upscale_file(upscaler, job: Job, quality: int | None) -> None:
    """Read, upscale and write one image, keeping its depth, grayscale and alpha."""
    from zerosr.atomic import atomic_write_bytes
    from zerosr.data.io import encode_image, quantize, read_image_unchanged, to_float32

    stored = read_image_unchanged(job.source)
    result = upscaler.upscale_image(to_float32(stored), high_depth=stored.dtype != np.uint8)
    depth = np.uint8 if stored.dtype == np.uint8 else np.uint16  # float sources come out 16-bit
    data = encode_image(quantize(result, depth), job.target.suffix, quality)
    atomic_write_bytes(job.target, data, advice=WRITE_ADVICE)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from zerosr.inference import Upscaler, check_writable, load_model, pick_accelerator

    if args.tile is not None and args.tile < 0:
        raise UserError(f"--tile {args.tile}: give a tile size in LR pixels, or 0 for whole images")
    if args.quality is not None and not 1 <= args.quality <= 100:
        raise UserError(f"--quality {args.quality} is out of range: give 1 to 100")
    source, output = Path(args.input), Path(args.output)
    jobs, ignored = plan(source, output, args.format)
    lossy = {job.target.suffix.lower() for job in jobs} & {".jpg", ".jpeg", ".webp"}
    if args.quality is not None and not lossy:
        raise UserError("--quality applies to JPEG and WebP output only: add --format jpg or --format webp")
    accelerator = pick_accelerator()
    model = load_model(args.model, accelerator.device)
    upscaler = Upscaler(model, accelerator, tile=args.tile)
    check_writable(jobs[0].target.parent if source.is_file() else output, "OUTPUT")

    done = skipped = failed = 0
    started = time.perf_counter()
    for job in tqdm(jobs, unit="image", disable=None, file=sys.stderr):
        if job.target.exists() and not args.overwrite:
            skipped += 1
            continue
        try:
            upscale_file(upscaler, job, args.quality)
        except UserError as err:
            tqdm.write(f"error: {err}", file=sys.stderr)
            failed += 1
            continue
        done += 1
    seconds = time.perf_counter() - started
    parts = [f"upscaled {done} image{'s' * (done != 1)} x{upscaler.scale} into {output}"]
    if skipped:
        parts.append(f"skipped {skipped} that already exist (--overwrite redoes them)")
    if ignored:
        parts.append(f"ignored {ignored} non-image file{'s' * (ignored != 1)}")
    if failed:
        parts.append(f"{failed} failed (see the error lines)")
    print(", ".join(parts) + f" in {seconds:.1f} s")
    return 2 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zerosr.upscale",
        description="Upscale an image or a folder of images with a trained model.",
    )
    parser.add_argument("model", help="weights (.safetensors from zerosr, traiNNer .pth) or a run directory")
    parser.add_argument("input", help="an image, or a folder read recursively")
    parser.add_argument("output", help="the output image (for one input image) or folder")
    parser.add_argument("--tile", type=int, help="tile size in LR pixels (default: from free memory; 0: whole images)")
    parser.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    parser.add_argument("--format", choices=sorted(FORMATS), help="output format (default: each input's own)")
    parser.add_argument("--quality", type=int, help="JPEG / WebP quality, 1-100 (default: JPEG 95, WebP lossless)")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
