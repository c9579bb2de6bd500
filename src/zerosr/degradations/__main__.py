"""Command line for the realistic degradations.

    python -m zerosr.degradations estimate DIR [--json]
        noise sigma (0-255), JPEG quality (1-100, null when none is seen) and blur sigma (pixels,
        null when the images have too few edges), medians over the folder's images.
    python -m zerosr.degradations preview HR_DIR OUT_DIR [--n 16] [--seed 0] [OVERRIDES...]
        HR/LR training pairs as a run with the same overrides would make them (e.g. scale=4,
        train.lq_size=64, data.target_path=DIR, data.degradation.noise_range=[1,10]).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from zerosr.cli import config_error_line, exit_on_user_error


def estimate(folder: str, as_json: bool) -> int:
    from zerosr.data.calibrate import profile_folder
    from zerosr.data.pairing import list_images
    from zerosr.errors import UserError

    if not Path(folder).is_dir():
        raise UserError(f"'{folder}' is not a folder: give a folder of the images you want to upscale")
    profile = profile_folder(list_images(folder, "DIR"), folder)
    summary = {**profile.summary(), "images": len(profile.estimates)}
    if as_json:
        print(json.dumps(summary))
        return 0
    quality = summary["jpeg_quality"]
    blur = summary["blur_sigma"]
    print(f"{folder}: {summary['images']} images (medians)")
    print(f"noise sigma  {summary['noise_sigma']:.2f} (0-255)")
    print(f"JPEG quality {'none seen' if quality is None else f'{quality:g}'}")
    print(f"blur sigma   {'unknown (too few edges)' if blur is None else f'{blur:.2f} px'}")
    return 0


def preview(hr_dir: str, out_dir: str, count: int, seed: int, overrides: list[str]) -> int:
    import torch

    from zerosr.config.compose import compose_config
    from zerosr.config.validate import validate
    from zerosr.data.io import write_image
    from zerosr.data.pairing import list_images
    from zerosr.data.realistic_data import RealisticPatchDataset
    from zerosr.engine.data import calibrated_settings, calibration_line
    from zerosr.errors import UserError

    if not Path(hr_dir).is_dir():
        raise UserError(f"'{hr_dir}' is not a folder: give a folder of HR images to preview")
    cfg = compose_config(["data=realistic", f"data.gt_path={hr_dir}", *overrides])
    validate(cfg)
    dataset = RealisticPatchDataset(list_images(hr_dir, "HR_DIR"), cfg.scale, cfg.train.lq_size, None,
                                    augment=True, cache=False)
    step = max(1, len(dataset.images) // 32)
    images = [dataset.images[i][0] for i in range(0, len(dataset.images), step)][:32]
    user_set = {o.split("=", 1)[0].removeprefix("data.degradation.") for o in overrides
                if o.startswith("data.degradation.")}
    dataset.settings, decisions = calibrated_settings(cfg, images, user_set)
    for decision in decisions:
        print(calibration_line(decision))
    out = Path(out_dir)
    items = [dataset.sample(i, torch.Generator().manual_seed(seed * 1_000_003 + i)) for i in range(count)]
    batch = dataset.collate(items)
    for k in range(count):
        write_image(out / f"{k:03d}_hr.png", batch["gt"][k].permute(1, 2, 0).numpy())
        write_image(out / f"{k:03d}_lr.png", batch["lq"][k].permute(1, 2, 0).numpy())
    print(f"wrote {count} HR/LR pairs (x{cfg.scale}, LR {cfg.train.lq_size} px) to {out}")
    return 0


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    parser = argparse.ArgumentParser(prog="python -m zerosr.degradations", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    est = commands.add_parser("estimate", help="measure noise, JPEG quality and blur of a folder")
    est.add_argument("dir")
    est.add_argument("--json", action="store_true", help="one JSON object on stdout")
    pre = commands.add_parser("preview", help="write HR/LR pairs as a data=realistic run makes them")
    pre.add_argument("hr_dir")
    pre.add_argument("out_dir")
    pre.add_argument("--n", type=int, default=16, help="pairs to write (default 16)")
    pre.add_argument("--seed", type=int, default=0)
    args, extra = parser.parse_known_args(argv)
    if args.command == "estimate":
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return estimate(args.dir, args.json)
    if args.n < 1:
        parser.error("--n must be at least 1")
    not_overrides = [a for a in extra if "=" not in a or a.startswith("-")]
    if not_overrides:
        parser.error(f"unrecognized arguments: {' '.join(not_overrides)} (overrides look like key=value)")
    try:
        return preview(args.hr_dir, args.out_dir, args.n, args.seed, extra)
    except (HydraException, OmegaConfBaseException) as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {config_error_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
