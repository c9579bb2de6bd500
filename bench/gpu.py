"""The GPU path on this machine's GPU, or on a simulated card. Writes one JSON object.

    python bench/gpu.py --quick --out outputs/gpu.json    # nano, s and xl in under 5 minutes on an H100
    python bench/gpu.py                                   # the full run: more steps, largest batches, agreement
    python bench/gpu.py --simulate card.json --quick --archs nano --tier budget --lq 8

Each variant's parts (docs/gpu.md explains every figure), each caught on its own: an allocation
failure (CUDA, cuBLAS, cuDNN) or any other error is recorded under the part's name as `error`, and
the next part runs. The JSON is rewritten after every part, so a time-out keeps what was measured.
- `search`: the start-up batch search as a run does it (its time, batch and reason); in the full
  run also `largest_fitting` (doubling to out-of-memory, then bisection) and `largest_within_target`;
- `compile`: the seconds of the first compiled step (null with `--no-compile`);
- `step`: real `Trainer.step()` iterations at the searched batch: ms, samples/s, peak memory;
- `flops`: forward + backward FLOPs per sample and MFU against the card's dense bf16 peak;
- `oom`: one out-of-memory error injected into the optimizer step, survived;
- `loop_vs_bare`: the real step against a bare forward + L1 + backward + AdamW of the same model,
  batch and precision, like for like: both compiled (full run) or both eager (`--quick`, `--no-compile`);
- `agreement`: the tier's precision against an fp32 reference with TF32 off;
and once per run: `degradation` (the on-device realistic degradation of one batch against the nano
step, target under 5 %) and `lr_equality` (device-made LR against CPU-made LR for the same seeds,
within 1/255 on at least 99.9 % of the pixels).
`--simulate CARD.json` runs the same code on a simulated card (`ZEROSR_SIMULATE_GPU=1` with
`ZEROSR_FAKE_HARDWARE=CARD.json`), so it is known to work before a GPU is lent.
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


ALLOCATION_FAILURES = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED",
                       "CUDNN_STATUS_NOT_ENOUGH_WORKSPACE", "CUDNN_STATUS_INTERNAL_ERROR", "cudaErrorMemoryAllocation")


class Report:
    """The JSON on disk, rewritten after every part; a failed part records its error and the run goes on."""

    def __init__(self, path: Path | None, header: dict, budget_s: float):
        self.path, self.data, self.budget_s = path, {**header, "results": {}}, budget_s
        self.started = time.perf_counter()
        self.save()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def save(self) -> None:
        self.data["seconds"] = round(self.elapsed(), 1)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_name(self.path.name + ".partial")
            partial.write_text(json.dumps(self.data, indent=2))
            partial.replace(self.path)

    def part(self, variant: str | None, name: str, measure, accelerator) -> dict | None:
        """Run `measure()` and record what it returns (or its error) under variant/name."""
        where = self.data["results"].setdefault(variant, {}) if variant else self.data
        if self.elapsed() > self.budget_s:
            where[name] = {"skipped": f"past the time budget of {self.budget_s:.0f} s"}
            self.save()
            return None
        log(f"{variant or 'run'}: {name}")
        begin, failure = time.perf_counter(), None
        try:
            where[name] = measure()
        except Exception as error:  # noqa: BLE001 - every failure is a figure of the report
            text = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            failure = {"error": text[:500], "allocation_failure": isinstance(error, MemoryError) or
                       any(marker in str(error) for marker in ALLOCATION_FAILURES)}
            log(f"{variant or 'run'}: {name} failed: {text[:200]}")
        if failure is not None:  # outside the except block: its traceback holds the failed part's tensors
            where[name] = failure
            with contextlib.suppress(Exception):
                accelerator.free_cache()
        if isinstance(where.get(name), dict):
            where[name]["part_seconds"] = round(time.perf_counter() - begin, 2)
        self.save()
        return where.get(name)


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


def bare_step_ms(cfg, learner, sample: dict, steps: int, compiled: bool) -> float:
    """bench/loop.py's bare step (forward + L1 + backward + AdamW), on the device, in the run's
    precision and memory format, on one real batch of the run's (random noise runs slower);
    compiled when the loop's forward is, so the two compare like for like."""
    import torch

    from zerosr import archs

    device, precision = learner.device, learner.precision
    model = archs.build(cfg.arch.name, cfg.scale, **cfg.arch.params).to(device)
    if learner.channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if compiled else model
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
            loss = (forward(x).float() - y).abs().mean()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        learner.accelerator.synchronize()
        times.append(time.perf_counter() - begin)
    del model, forward, optimizer
    learner.accelerator.free_cache()
    return 1000 * statistics.median(times[3:])


def agreement(cfg, accelerator, batch: int, steps: int) -> dict:
    """The tier's precision against fp32 with TF32 off: the same weights, the same batches."""
    import torch
    from omegaconf import OmegaConf, open_dict

    from zerosr.engine.data import BatchStream, build_data
    from zerosr.engine.learner import Learner
    from zerosr.exact import exact_fp32

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
        learner = Learner(run_cfg, accelerator)  # turns TF32 on for a card of 8.0+ ...
        lr = float(cfg.train.lr)
        with exact_fp32() if name == "fp32" else contextlib.nullcontext():  # ... which the reference must not use
            losses[name] = [learner.train_on(b["lq"], b["gt"], lr) for b in batches]
        losses[f"{name}_precision"] = learner.precision.name
        del learner
        accelerator.free_cache()
    pairs = list(zip(losses["tier"], losses["fp32"]))
    return {"precision": losses["tier_precision"], "reference": f"{losses['fp32_precision']} without TF32",
            "steps": steps, "batch": batch,
            "max_rel_diff": round(max(abs(a - b) / max(abs(b), 1e-12) for a, b in pairs), 5),
            "final_loss": {"tier": round(pairs[-1][0], 6), "fp32": round(pairs[-1][1], 6)}}


def degradation_batch(batch: int, lq: int, scale: int):
    """HR patches with structure (smooth gradients and edges, as photos have) and their seeds."""
    import torch

    generator = torch.Generator().manual_seed(0)
    size = lq * scale
    ramp = torch.linspace(0, 1, size)
    base = (ramp[None, :] * ramp[:, None])[None, None]
    hr = (0.6 * base + 0.4 * torch.rand(batch, 3, size // 8, size // 8, generator=generator)
          .repeat_interleave(8, -1).repeat_interleave(8, -2)).clamp(0, 1)
    seeds = torch.randint(2**62, (batch,), generator=generator).tolist()
    return hr, seeds


def degradation_cost(accelerator, batch: int, lq: int, scale: int, step_ms: float | None, reps: int) -> dict:
    """The realistic degradation of one training batch on the device (data=realistic on a GPU),
    against the nano step at its searched batch: target under 5 %."""
    from zerosr.data.realistic import degrade_batch
    from zerosr.degradation_settings import DegradationSettings

    settings = DegradationSettings()
    hr, seeds = degradation_batch(batch, lq, scale)
    with accelerator.host():
        hr = hr.pin_memory() if accelerator.kind == "cuda" else hr
    times = []
    for _ in range(reps + 2):
        accelerator.synchronize()
        begin = time.perf_counter()
        degrade_batch(hr.to(accelerator.device, non_blocking=True), seeds, settings, scale)
        accelerator.synchronize()
        times.append(time.perf_counter() - begin)
    ms = 1000 * statistics.median(times[2:])
    share = ms / step_ms if step_ms else None
    return {"batch": batch, "lq_size": lq, "ms_per_batch": round(ms, 2), "nano_step_ms": step_ms,
            "share_of_step": round(share, 4) if share is not None else None, "target": 0.05,
            "within_target": bool(share is not None and share < 0.05)}


def lr_equality(accelerator, batch: int, lq: int, scale: int) -> dict:
    """LR made on the device against LR made on the CPU for the same HR and seeds: within 1/255 on
    at least 99.9 % of the pixels (TF32 would move a few percent by up to 21 levels)."""
    from zerosr.data.realistic import degrade_batch
    from zerosr.degradation_settings import DegradationSettings

    settings = DegradationSettings()
    hr, seeds = degradation_batch(batch, lq, scale)
    with accelerator.host():
        on_cpu = degrade_batch(hr, seeds, settings, scale, "cpu")
    on_device = degrade_batch(hr.to(accelerator.device), seeds, settings, scale)
    with accelerator.host():
        diff = (on_device.float().cpu() - on_cpu).abs()
    within = float((diff <= 1 / 255 + 1e-6).float().mean())
    return {"batch": batch, "lq_size": lq, "within_1_255": round(within, 6), "max_levels": round(float(diff.max()) * 255, 2),
            "target": 0.999, "equal": within >= 0.999}


def measure(variant: str, args, work: Path, report: Report, accelerator) -> None:
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
    if args.max_batch:
        overrides.append(f"automation.batch.max_batch_size={args.max_batch}")
    if args.no_compile:
        overrides.append("hardware_tier.compile=false")
    if args.gan:
        # Scored by PSNR/SSIM: LPIPS/DISTS would need pretrained files a GPU machine without network lacks.
        overrides += [f"train.losses={GAN_LOSSES}", "automation.loss_schedule.gan_delay=0",
                      "train.val_metrics=[psnr,ssim]", "train.select_metric=psnr"]
    cfg = compose_config(overrides)
    trainer = Trainer(cfg, work / variant)
    cfg, learner = trainer.cfg, trainer.learner
    auto, scale = cfg.automation.batch, int(cfg.scale)
    total = accelerator.total_memory()
    result = report.data["results"].setdefault(variant, {})
    result.update({"tier": cfg.hardware_tier.name, "precision": learner.precision.name,
                   "compiled": bool(cfg.hardware_tier.compile and accelerator.compiles)})
    state = {"batch": int(cfg.train.batch_size), "lq": int(cfg.train.lq_size), "step_ms": None}
    try:
        def search():
            begin = time.perf_counter()
            batch, lq, decision = search_batch_size(learner, cfg, cfg.train.batch_size, cfg.train.lq_size,
                                                    keep_lq_size=True, largest_lq=trainer.data.train.largest_lq_size,
                                                    validator=trainer.validator)
            seconds = time.perf_counter() - begin
            trainer.suite.adopt_batch(0, batch)
            trainer.apply_batch(batch, lq)
            state.update(batch=batch, lq=lq)
            out = {"seconds": round(seconds, 2), "batch": batch, "lq_size": lq, "reason": decision.reason,
                   "max_batch_size": int(auto.max_batch_size)}
            if not args.quick:
                budget = (auto.target_vram_usage - auto.safety_margin) * total
                largest = largest_fitting(learner, accelerator, batch, lq, scale, None)
                within = largest_fitting(learner, accelerator, batch, lq, scale, budget)
                out.update(largest_fitting=largest, largest_within_target=within,
                           of_largest_fitting=round(batch / largest, 3) if largest else None,
                           of_largest_within_target=round(batch / within, 3) if within else None)
            return out

        report.part(variant, "search", search, accelerator)

        def compile_step():
            learner.compile()  # as a run does, after the search (real GPUs only)
            seconds, _ = timed_steps(trainer, 1)  # the trace and code generation, or the eager warm-up
            timed_steps(trainer, 1)  # the allocator and Adam's state settle
            return {"seconds": round(seconds[0], 2) if learner.forward is not learner.model else None,
                    "first_step_s": round(seconds[0], 2)}

        report.part(variant, "compile", compile_step, accelerator)

        def step():
            seconds, peaks = timed_steps(trainer, args.steps)
            step_s = statistics.median(seconds)
            state["step_ms"] = 1000 * step_s
            batch = trainer.suite.batch.batch_size
            peak = max(peaks)
            target = float(auto.target_vram_usage) * total
            return {"ms": round(1000 * step_s, 2), "samples_per_s": round(batch / step_s, 1), "batch": batch,
                    "peak_bytes": int(peak), "peak_of_card": round(peak / total, 4),
                    "target_of_card": float(auto.target_vram_usage), "within_target": bool(peak <= target)}

        stepped = report.part(variant, "step", step, accelerator)

        def flops():
            count = flops_per_sample(learner.module, state["lq"], learner.device, learner.precision.autocast)
            samples = stepped["samples_per_s"]
            peak = card_peak(accelerator.name)
            return {"per_sample_fwd_bwd": count, "model_flops_per_s": round(count * samples),
                    "card_peak_bf16": peak, "mfu": round(count * samples / peak, 5) if peak else None}

        if stepped and "ms" in stepped:
            report.part(variant, "flops", flops, accelerator)

        def oom():
            before, retried = trainer.suite.batch.batch_size, trainer.faults["oom_retried"]
            learner.injection = OomInjection([f"optimizer:{trainer.iteration + 1}"])
            stats = trainer.step()
            return {"point": "optimizer", "survived": bool(math.isfinite(stats["loss"]) and
                                                           trainer.faults["oom_retried"] == retried + 1),
                    "batch_before": before, "batch_after": trainer.suite.batch.batch_size,
                    "samples_trained": stats["batch_size"]}

        report.part(variant, "oom", oom, accelerator)

        def loop_vs_bare():
            trainer.apply_batch(state["batch"])
            with accelerator.host():
                sample = trainer.stream.next_batch()
            compiled = learner.forward is not learner.model and not args.quick
            loop_ms = state["step_ms"]
            if not compiled and learner.forward is not learner.model:  # --quick: the loop eager too
                forward, learner.forward = learner.forward, learner.model
                try:
                    timed_steps(trainer, 1)
                    loop_ms = 1000 * statistics.median(timed_steps(trainer, args.steps)[0])
                finally:
                    learner.forward = forward
            bare_ms = bare_step_ms(cfg, learner, sample, args.steps, compiled)
            return {"mode": "compiled" if compiled else "eager", "loop_ms": round(loop_ms, 2),
                    "bare_ms": round(bare_ms, 2), "ratio": round(loop_ms / bare_ms, 3)}

        if state["step_ms"] is not None:
            report.part(variant, "loop_vs_bare", loop_vs_bare, accelerator)
    finally:
        trainer.close()
    trainer = learner = None  # freed before the agreement builds its own
    accelerator.free_cache()
    if args.agreement_steps:
        # A quarter of the searched batch (at most 8): fp32 needs about twice the activations of bf16.
        report.part(variant, "agreement", lambda: agreement(cfg, accelerator, max(1, min(8, state["batch"] // 4)),
                                                            args.agreement_steps), accelerator)
    if "degradation" not in report.data:  # the first variant's step is what the degradation is judged against
        report.data["nano_step"] = {"variant": variant, "batch": state["batch"], "lq": state["lq"], "ms": state["step_ms"]}


GAN_LOSSES = ("[{_target_:zerosr.losses.CharbonnierLoss,weight:1.0},{_target_:zerosr.losses.GANLoss,weight:0.05,"
              "discriminator:{_target_:zerosr.losses.UNetDiscriminatorSN,num_feat:16}}]")


def once_per_run(report: Report, accelerator, args) -> None:
    """The degradation's cost against the first variant's step, and device-vs-CPU LR."""
    nano = report.data.pop("nano_step", {})
    batch, lq = nano.get("batch") or 4, nano.get("lq") or 32
    report.part(None, "degradation", lambda: degradation_cost(accelerator, batch, lq, 2, nano.get("ms"),
                                                             3 if args.quick else 10), accelerator)
    report.part(None, "lr_equality", lambda: lr_equality(accelerator, min(batch, 8), lq, 2), accelerator)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", help="ParagonSR2 variants (default: nano s xl)")
    parser.add_argument("--simulate", metavar="CARD.json", help="run on a simulated card described by this file")
    parser.add_argument("--quick", action="store_true",
                        help="few steps, no largest-batch bisection, eager loop-vs-bare: under 5 minutes on an H100")
    parser.add_argument("--out", type=Path, default=Path("outputs/gpu_bench.json"),
                        help="the JSON, rewritten after every part (default: outputs/gpu_bench.json)")
    parser.add_argument("--no-compile", action="store_true", help="train eagerly (hardware_tier.compile=false)")
    parser.add_argument("--gan", action="store_true", help="train with a GAN loss (discriminator and its optimizer)")
    parser.add_argument("--lq", type=int, help="LR patch size (default: the tier's)")
    parser.add_argument("--steps", type=int, help="timed steps per arch (default 20; --quick 5)")
    parser.add_argument("--agreement-steps", type=int, help="steps of the fp32 agreement (default 20; --quick 3; 0: off)")
    parser.add_argument("--budget-s", type=float, help="parts that would start past this many seconds are skipped "
                        "(default: none; --quick 290)")
    parser.add_argument("--tier", help="hardware_tier (default: detected; a scaled-down simulated card needs its class's)")
    parser.add_argument("--num-workers", type=int, help="hardware_tier.num_workers (default: the tier's)")
    parser.add_argument("--max-batch", type=int, help="automation.batch.max_batch_size (default: the tier's)")
    args = parser.parse_args()
    args.archs = args.archs or ["nano", "s", "xl"]
    args.steps = args.steps or (5 if args.quick else 20)
    args.agreement_steps = args.agreement_steps if args.agreement_steps is not None else (3 if args.quick else 20)
    # A real card's --quick must end within 5 minutes; a simulated one runs on the CPU and takes longer.
    budget = args.budget_s or (290.0 if args.quick and not args.simulate else math.inf)
    if args.simulate:
        os.environ["ZEROSR_SIMULATE_GPU"], os.environ["ZEROSR_FAKE_HARDWARE"] = "1", str(Path(args.simulate).resolve())
    os.environ.setdefault("ZEROSR_CACHE_DIR", os.path.join(tempfile.gettempdir(), "zerosr-bench-cache"))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # from a checkout without `pip install`
    import torch

    from zerosr.engine.accelerator import current
    from zerosr.errors import UserError

    try:
        accelerator = current()
    except UserError as error:
        raise SystemExit(f"error: {error}") from None
    if not accelerator.is_gpu:
        raise SystemExit("error: no GPU here: run on a CUDA machine, or simulate one with --simulate CARD.json")
    header = {"device": accelerator.name, "kind": accelerator.kind, "memory_bytes": accelerator.total_memory(),
              "capability": list(accelerator.capability()), "torch": torch.__version__, "quick": args.quick,
              "compile": not args.no_compile, "gan": args.gan, "archs": args.archs}
    report = Report(args.out, header, budget)
    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(sys.stderr), accelerator.active():
        for index, variant in enumerate(args.archs):
            try:
                measure(variant, args, Path(folder), report, accelerator)
            except Exception as error:  # noqa: BLE001 - building the run failed: recorded, on to the next
                report.data["results"].setdefault(variant, {})["error"] = f"{type(error).__name__}: {error}"[:500]
                report.save()
            if index == 0:  # right after the first (smallest) variant: its step is the yardstick
                once_per_run(report, accelerator, args)
    report.save()
    print(json.dumps(report.data, indent=2))
    failed = [f"{v}.{k}" for v, parts in report.data["results"].items() for k, part in
              (parts.items() if isinstance(parts, dict) else []) if isinstance(part, dict) and "error" in part]
    failed += [k for k in ("degradation", "lr_equality") if "error" in report.data.get(k, {})]
    if failed:
        log(f"failed parts: {', '.join(failed)}")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
