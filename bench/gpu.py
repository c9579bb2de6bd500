"""The GPU path on this machine's GPU, or on a simulated card. Prints one JSON object.

    python bench/gpu.py                                   # nano, s and xl on the detected GPU
    python bench/gpu.py --simulate card.json --archs nano --lq 8 --steps 5 --agreement-steps 5

For each arch, in the detected tier's precision, on the demo data (`python train.py arch=ARCH`
as composed on this machine, the batch left to the search):
- `search`: the start-up batch search as a run does it (whole real iterations as probes, the
  validation tile checked), its time, and the batch it picked against `largest_fitting`, the
  largest batch whose probe really fits (doubling to out-of-memory, then bisection), and against
  `largest_within_target` (the same, judged by the tier's target and margin, no batch cap);
- `step`: real `Trainer.step()` iterations at the searched batch (automations, readback): step
  time, samples/s, peak memory against the tier's target;
- `flops`: the generator's forward + backward FLOPs per sample (torch's FlopCounterMode), model
  FLOP/s and MFU against the card's dense bf16 tensor peak (`PEAK_TFLOPS`, by card name; fp16 for
  cards without bf16); null for a card not in the table;
- `oom`: one out-of-memory error injected into the optimizer step, survived (the batch halves,
  the same samples train, the loss stays finite);
- `agreement`: the tier's precision against fp32 over the same `--agreement-steps` batches from
  the same weights: the largest relative loss difference;
- `loop_vs_bare`: the real step against a bare forward + L1 + backward + AdamW of the same model,
  batch and precision (bench/loop.py's BareStep, on the device).
Progress goes to stderr, the JSON to stdout. Budget: under 8 minutes on one large GPU.
`--simulate CARD.json` runs the same code on a simulated card (`ZEROSR_SIMULATE_GPU=1` with
`ZEROSR_FAKE_HARDWARE=CARD.json`, see the README), so it is known to work before a GPU is lent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' datasheets; fp16 for cards
# without bf16. Matched by substring of the device name, longest first.
PEAK_TFLOPS = {
    "H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0,
    "A10G": 70.0, "A10": 125.0, "RTX 6000 Ada": 364.0, "A6000": 155.0, "4090": 165.0, "4080": 97.0,
    "3090": 71.0, "3080": 59.0, "V100": 125.0, "T4": 65.0,
}


def card_peak(name: str) -> float | None:
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key.lower() in name.lower():
            return PEAK_TFLOPS[key] * 1e12
    return None


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def flops_per_sample(module, lq: int, device, autocast) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, 3, lq, lq, device=device)
    counter = FlopCounterMode(display=False)
    with counter, autocast():
        module(x).float().mean().backward()
    module.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def largest_fitting(learner, accelerator, start: int, lq: int, scale: int, budget: float | None,
                    cap: int = 8192) -> int:
    """The largest batch whose probe (the start-up search's whole iteration) stays under `budget`
    bytes (None: fits the card at all): doubling from `start` to the first failure, then bisection."""
    import torch

    from zerosr.automations.batch import peak_memory_of
    from zerosr.engine.startup import _synthetic_step

    def fits(batch: int) -> bool:
        try:
            peak = peak_memory_of(lambda: _synthetic_step(learner, batch, lq, scale), accelerator)
        except torch.OutOfMemoryError:
            peak = None
        if peak is None:
            learner.recover_from_oom()
            return False
        return budget is None or peak <= budget

    low, high = 0, None
    batch = max(1, start)
    with learner.probing():
        while high is None and batch <= cap:
            if fits(batch):
                low, batch = batch, batch * 2
            else:
                high = batch
        if low == 0:
            return 0
        high = high or cap + 1
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def timed_steps(trainer, steps: int) -> tuple[list[float], list[float]]:
    seconds, peaks = [], []
    for _ in range(steps):
        trainer.accelerator.synchronize()
        begin = time.perf_counter()
        stats = trainer.step()
        trainer.accelerator.synchronize()
        seconds.append(time.perf_counter() - begin)
        peaks.append(stats.get("peak_mem_bytes", math.nan))
    return seconds, peaks


def bare_step_ms(cfg, learner, sample: dict, steps: int) -> float:
    """bench/loop.py's bare step (forward + L1 + backward + AdamW), on the device, in the run's
    precision and memory format, on one real batch of the run's (random noise runs slower)."""
    import torch

    from zerosr import archs

    device, precision = learner.device, learner.precision
    model = archs.build(cfg.arch.name, cfg.scale, **cfg.arch.params).to(device)
    if learner.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.scaler.is_enabled())
    x, y = sample["lq"].to(device), sample["gt"].to(device)
    if learner.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    times = []
    for _ in range(steps + 3):
        learner.accelerator.synchronize()
        begin = time.perf_counter()
        with precision.autocast():
            loss = (model(x).float() - y).abs().mean()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        learner.accelerator.synchronize()
        times.append(time.perf_counter() - begin)
    del model, optimizer
    learner.accelerator.free_cache()
    return 1000 * statistics.median(times[3:])


def agreement(cfg, accelerator, batch: int, steps: int) -> dict:
    """The tier's precision against fp32: the same weights, the same batches, `steps` steps."""
    import torch
    from omegaconf import OmegaConf, open_dict

    from zerosr.engine.data import BatchStream, build_data
    from zerosr.engine.learner import Learner

    stream = BatchStream(build_data(cfg).train, batch, seed=1)
    with accelerator.host():
        batches = [stream.next_batch() for _ in range(steps)]
    stream.close()
    losses = {}
    for name in ("tier", "fp32"):
        run_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        if name == "fp32":
            with open_dict(run_cfg):
                run_cfg.hardware_tier.precision = "fp32"
        torch.manual_seed(0)
        learner = Learner(run_cfg, accelerator)
        lr = float(cfg.train.lr)
        losses[name] = [learner.train_on(b["lq"], b["gt"], lr) for b in batches]
        precision = learner.precision.name if name == "tier" else "fp32"
        losses[f"{name}_precision"] = precision
        del learner
        accelerator.free_cache()
    pairs = list(zip(losses["tier"], losses["fp32"]))
    return {"precision": losses["tier_precision"], "steps": steps, "batch": batch,
            "max_rel_diff": round(max(abs(a - b) / max(abs(b), 1e-12) for a, b in pairs), 5),
            "final_loss": {"tier": round(pairs[-1][0], 6), "fp32": round(pairs[-1][1], 6)}}


def measure(variant: str, args, work: Path) -> dict:
    import torch

    from zerosr.config.compose import compose_config
    from zerosr.engine.injection import OomInjection
    from zerosr.engine.loop import Trainer
    from zerosr.engine.startup import search_batch_size

    overrides = [f"arch=paragonsr2_{variant}", "data.run_iter=null", "automation.lr.find=false"]
    if args.lq:
        overrides.append(f"train.lq_size={args.lq}")
    if args.tier:
        overrides.append(f"hardware_tier={args.tier}")
    if args.num_workers is not None:
        overrides.append(f"hardware_tier.num_workers={args.num_workers}")
    cfg = compose_config(overrides)
    trainer = Trainer(cfg, work / variant)
    cfg, learner, accelerator = trainer.cfg, trainer.learner, trainer.accelerator
    auto, scale = cfg.automation.batch, int(cfg.scale)
    total = accelerator.total_memory()
    result = {"tier": cfg.hardware_tier.name, "precision": learner.precision.name, "total_iter": cfg.train.total_iter}
    try:
        log(f"{variant}: search")
        begin = time.perf_counter()
        batch, lq, decision = search_batch_size(learner, cfg, cfg.train.batch_size, cfg.train.lq_size,
                                                keep_lq_size=True, largest_lq=trainer.data.train.largest_lq_size,
                                                validator=trainer.validator)
        search_s = time.perf_counter() - begin
        trainer.suite.adopt_batch(0, batch)
        trainer.apply_batch(batch, lq)
        log(f"{variant}: largest fitting batches")
        budget = (auto.target_vram_usage - auto.safety_margin) * total
        largest = largest_fitting(learner, accelerator, batch, lq, scale, None)
        within = largest_fitting(learner, accelerator, batch, lq, scale, budget)
        result["search"] = {"seconds": round(search_s, 2), "batch": batch, "lq_size": lq, "reason": decision.reason,
                            "largest_fitting": largest, "largest_within_target": within,
                            "max_batch_size": int(auto.max_batch_size),
                            "of_largest_fitting": round(batch / largest, 3) if largest else None,
                            "of_largest_within_target": round(batch / within, 3) if within else None}
        learner.compile()  # as a run does, after the search (real GPUs only)
        log(f"{variant}: {args.steps} steps at batch {batch}")
        timed_steps(trainer, 2)  # warm-up: compile, allocator, Adam state
        seconds, peaks = timed_steps(trainer, args.steps)
        step_s = statistics.median(seconds)
        samples = trainer.suite.batch.batch_size / step_s
        target = float(auto.target_vram_usage) * total
        result["step"] = {"ms": round(1000 * step_s, 2), "samples_per_s": round(samples, 1),
                          "batch": trainer.suite.batch.batch_size, "peak_bytes": int(max(peaks)),
                          "peak_of_card": round(max(peaks) / total, 4), "target_of_card": float(auto.target_vram_usage),
                          "within_target": bool(max(peaks) <= target)}
        flops = flops_per_sample(learner.module, lq, learner.device, learner.precision.autocast)
        peak = card_peak(accelerator.name)
        result["flops"] = {"per_sample_fwd_bwd": flops, "model_flops_per_s": round(flops * samples),
                           "card_peak_bf16": peak, "mfu": round(flops * samples / peak, 5) if peak else None}
        log(f"{variant}: an injected out-of-memory error in the optimizer step")
        before, retried = trainer.suite.batch.batch_size, trainer.faults["oom_retried"]
        learner.injection = OomInjection([f"optimizer:{trainer.iteration + 1}"])
        stats = trainer.step()
        result["oom"] = {"point": "optimizer", "survived": bool(math.isfinite(stats["loss"]) and
                                                                trainer.faults["oom_retried"] == retried + 1),
                         "batch_before": before, "batch_after": trainer.suite.batch.batch_size,
                         "samples_trained": stats["batch_size"]}
        loop_ms = 1000 * step_s
        trainer.apply_batch(batch)
        with accelerator.host():
            sample = trainer.stream.next_batch()
        bare_ms = bare_step_ms(cfg, learner, sample, args.steps)
        result["loop_vs_bare"] = {"loop_ms": round(loop_ms, 2), "bare_ms": round(bare_ms, 2),
                                  "ratio": round(loop_ms / bare_ms, 3)}
    finally:
        trainer.close()
    log(f"{variant}: {args.agreement_steps} steps, {learner.precision.name} against fp32")
    del trainer, learner
    accelerator.free_cache()
    # A quarter of the searched batch (at most 8): fp32 needs about twice the activations of bf16.
    result["agreement"] = agreement(cfg, accelerator, max(1, min(8, batch // 4)), args.agreement_steps)
    torch.manual_seed(0)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["nano", "s", "xl"], help="ParagonSR2 variants")
    parser.add_argument("--simulate", metavar="CARD.json", help="run on a simulated card described by this file")
    parser.add_argument("--lq", type=int, help="LR patch size (default: the tier's)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per arch")
    parser.add_argument("--agreement-steps", type=int, default=20)
    parser.add_argument("--tier", help="hardware_tier (default: detected; a scaled-down simulated card needs its class's)")
    parser.add_argument("--num-workers", type=int, help="hardware_tier.num_workers (default: the tier's)")
    args = parser.parse_args()
    if args.simulate:
        os.environ["ZEROSR_SIMULATE_GPU"], os.environ["ZEROSR_FAKE_HARDWARE"] = "1", str(Path(args.simulate).resolve())
    os.environ.setdefault("ZEROSR_CACHE_DIR", os.path.join(tempfile.gettempdir(), "zerosr-bench-cache"))
    import torch

    from zerosr.engine.accelerator import current

    accelerator = current()
    if not accelerator.is_gpu:
        raise SystemExit("error: no GPU here: run on a CUDA machine, or simulate one with --simulate CARD.json")
    started = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(sys.stderr), accelerator.active():
        for variant in args.archs:
            results[variant] = measure(variant, args, Path(folder))
    out = {"device": accelerator.name, "kind": accelerator.kind, "memory_bytes": accelerator.total_memory(),
           "capability": list(accelerator.capability()), "torch": torch.__version__,
           "seconds": round(time.perf_counter() - started), "results": results}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
