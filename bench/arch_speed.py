"""Training-step speed of the ParagonSR2 variants on this machine, printed as JSON.

One step = forward + L1 loss + backward + AdamW update, batch 8, 48x48 LR patches, x2 by default.
With `--reference PATH` the original `paragonsr2_arch.py` is loaded from PATH (it is never part of
this repository), given the same weights, and timed in the same run with the two models
alternating step by step, so load changes on the machine hit both alike. `--family` picks the
generation: ParagonSR2 (nano..xl, reference: traiNNer-redux's file) or ParagonSR2-gen2
(realtime..pro, reference: Phhofm/ParagonSR2's file); the factories share the option names.

    python bench/arch_speed.py --reference /tmp/ref/paragonsr2_arch.py --variants nano,s --iters 5
    python bench/arch_speed.py --family ParagonSR2-gen2 --reference /tmp/gen2/paragonsr2_arch.py --variants realtime
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import time
import types

import torch

from zerosr.archs import build, family


def load_reference(path: str) -> types.ModuleType:
    """Import the reference file with a stand-in for the traiNNer registry it registers into."""

    class Registry:
        def register(self):
            return lambda obj: obj

    for name in ("traiNNer", "traiNNer.utils"):
        sys.modules.setdefault(name, types.ModuleType(name))
    registry = types.ModuleType("traiNNer.utils.registry")
    registry.ARCH_REGISTRY = Registry()
    sys.modules["traiNNer.utils.registry"] = registry
    spec = importlib.util.spec_from_file_location("paragonsr2_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Stepper:
    """One model with its optimiser and a fixed batch; `step()` returns seconds taken."""

    def __init__(self, model: torch.nn.Module, batch: int, patch: int, scale: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.model = model.train()
        self.lr = torch.rand(batch, 3, patch, patch, generator=generator)
        self.hr = torch.rand(batch, 3, patch * scale, patch * scale, generator=generator)
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(self) -> float:
        start = time.perf_counter()
        loss = torch.nn.functional.l1_loss(self.model(self.lr), self.hr)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - start


def bench_variant(name: str, args, reference) -> dict:
    torch.manual_seed(0)
    ours = build(name, args.scale)
    row = {"params": sum(p.numel() for p in ours.parameters())}
    steppers = {"ours": Stepper(ours, args.batch, args.patch, args.scale)}
    if reference is not None:
        theirs = getattr(reference, name)(scale=args.scale)
        theirs.load_state_dict(ours.state_dict())
        steppers["reference"] = Stepper(theirs, args.batch, args.patch, args.scale)
    times = {key: [] for key in steppers}
    for i in range(args.warmup + args.iters):
        # Alternate which model goes first so neither always runs on a warmer cache.
        order = list(steppers) if i % 2 == 0 else list(reversed(steppers))
        for key in order:
            seconds = steppers[key].step()
            if i >= args.warmup:
                times[key].append(seconds)
    for key, values in times.items():
        row[f"{key}_s"] = round(statistics.median(values), 4)
        row[f"{key}_min_s"] = round(min(values), 4)
    if reference is not None:
        # Steps of the two models run back to back, so a burst of load from elsewhere on the
        # machine usually hits both steps of a pair: the median of per-pair ratios is steadier
        # than a ratio of medians.
        pairs = [a / b for a, b in zip(times["ours"], times["reference"], strict=True)]
        row["ratio"] = round(statistics.median(pairs), 3)
        row["ratio_of_medians"] = round(row["ours_s"] / row["reference_s"], 3)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="ParagonSR2", help="ParagonSR2 (nano..xl) or ParagonSR2-gen2 (realtime..pro)")
    parser.add_argument("--reference", help="path to the generation's reference paragonsr2_arch.py to compare with")
    parser.add_argument("--variants", help="comma list, e.g. nano,s or paragonsr2_m (default: the family's all)")
    parser.add_argument("--iters", type=int, default=5, help="timed steps per model (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--patch", type=int, default=48, help="LR patch side")
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    known = family(args.family).variants
    chosen = args.variants.split(",") if args.variants else list(known)
    names = [v if v.startswith("paragonsr2_") else f"paragonsr2_{v}" for v in chosen if v]
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    reference = load_reference(args.reference) if args.reference else None

    results = {}
    for name in names:
        results[name] = bench_variant(name, args, reference)
        print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
    report = {
        "family": args.family,
        "step": "forward+backward+AdamW",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "batch": args.batch,
        "lr_patch": args.patch,
        "scale": args.scale,
        "iters": args.iters,
        "results": results,
    }
    if reference is not None:
        report["max_ratio"] = max(row["ratio"] for row in results.values())
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
