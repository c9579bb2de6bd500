"""Training-step speed of SPAN, Compact, RealPLKSR and ESRGAN against spandrel's own classes.

One step = forward + L1 loss + backward + AdamW update, batch 8, 48x48 LR patches (x4 by
default), as `bench/arch_speed.py` times ParagonSR2. spandrel 0.4.2's architecture files are
imported from `--spandrel DIR`, a scratch copy holding a `spandrel/` package made as the
docstring of tests/test_community_archs.py describes (never part of this repository). Both
networks get the same weights and batch and run alternately, step by step, in one process.

    taskset -c 1 python bench/community_speed.py --spandrel /tmp/spandrel_stub --variants span,compact --iters 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys

import torch

from arch_speed import Stepper
from zerosr.archs import compact, esrgan, realplksr, span

VARIANTS = {name: module for module in (span, compact, realplksr, esrgan) for name in module.VARIANTS}
OURS = {span: span.SPAN, compact: compact.Compact, realplksr: realplksr.RealPLKSR, esrgan: esrgan.ESRGAN}


def spandrel_network(name: str, scale: int) -> torch.nn.Module:
    """spandrel's class for the variant, built with traiNNer-redux's factory settings."""
    params = VARIANTS[name].VARIANTS[name]
    if VARIANTS[name] is span:
        from spandrel.architectures.SPAN import SPAN

        return SPAN(num_in_ch=3, num_out_ch=3, upscale=scale, feature_channels=params["feature_channels"], norm=params["norm"])
    if VARIANTS[name] is compact:
        from spandrel.architectures.Compact import Compact

        return Compact(upscale=scale, num_feat=params["num_feat"], num_conv=params["num_conv"])
    if VARIANTS[name] is realplksr:
        from spandrel.architectures.PLKSR import RealPLKSR

        return RealPLKSR(upscaling_factor=scale, **params)
    from spandrel.architectures.ESRGAN import ESRGAN

    shuffle = esrgan.unshuffle_factor(scale)
    nf, nb = params["num_filters"], params["num_blocks"]
    return ESRGAN(
        in_nc=3 * shuffle**2, scale=scale * shuffle, num_filters=nf, num_blocks=nb, shuffle_factor=shuffle if shuffle > 1 else None
    )


def bench_variant(name: str, args) -> dict:
    torch.manual_seed(0)
    ours = OURS[VARIANTS[name]](args.scale, **VARIANTS[name].VARIANTS[name])
    theirs = spandrel_network(name, args.scale)
    theirs.load_state_dict(ours.state_dict())
    steppers = {
        "ours": Stepper(ours, args.batch, args.patch, args.scale),
        "spandrel": Stepper(theirs, args.batch, args.patch, args.scale),
    }
    times = {key: [] for key in steppers}
    for i in range(args.warmup + args.iters):
        for key in list(steppers) if i % 2 == 0 else list(reversed(steppers)):
            seconds = steppers[key].step()
            if i >= args.warmup:
                times[key].append(seconds)
    row = {"params": sum(p.numel() for p in ours.parameters() if p.requires_grad)}
    for key, values in times.items():
        row[f"{key}_s"] = round(statistics.median(values), 4)
    # Back-to-back pairs see the same machine load: the median of per-pair ratios is the steadier figure.
    row["ratio"] = round(statistics.median(a / b for a, b in zip(times["ours"], times["spandrel"], strict=True)), 3)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spandrel", required=True, help="directory holding the scratch `spandrel/` package")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--iters", type=int, default=5, help="timed steps per model (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--patch", type=int, default=48, help="LR patch side")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sys.path.insert(0, args.spandrel)
    names = [name for name in args.variants.split(",") if name]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    results = {}
    for name in names:
        results[name] = bench_variant(name, args)
        print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
    report = {
        "step": "forward+L1+backward+AdamW",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "batch": args.batch,
        "lr_patch": args.patch,
        "scale": args.scale,
        "iters": args.iters,
        "results": results,
        "max_ratio": max(row["ratio"] for row in results.values()),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
