"""What a fresh run measures before its first step: batch size, dataset character, base LR.

Every probe runs real training iterations inside `Learner.probing()`, which puts every part of
the learner back afterwards, so the run itself starts from the same weights whatever was
measured. The probes use synthetic patches (no training sample is consumed), except the dataset
analysis and the LR range test, which read streams of their own.
"""

from __future__ import annotations

import math
import time
from statistics import geometric_mean

import psutil
import torch
from omegaconf import DictConfig

from zerosr.archs.spec import CUSTOM, feature_width
from zerosr.automations import analyse, cpu_batch_size, find_batch_size, peak_memory_of
from zerosr.automations.base import Decision
from zerosr.automations.batch import (
    CPU_CLEAR_GAIN,
    CPU_ROUNDS,
    NOT_RUN,
    PROBE_STEPS,
    cpu_sizes_to_time,
    lq_candidates,
    memory_budget,
    memory_size,
)
from zerosr.automations.lr import LRController
from zerosr.engine.checkpoint import capture_rng_state, restore_rng_state
from zerosr.engine.data import BatchStream
from zerosr.engine.learner import Learner
from zerosr.engine.preset_lr import SEEDS, MeasuredLR, divergence_lr, format_lrs, probe_config
from zerosr.engine.validation import Validator
from zerosr.errors import UserError


def _synthetic_step(learner: Learner, batch: int, lq_size: int, scale: int) -> float:
    """One real iteration on random patches at the optimizer's own LR; returns the loss."""
    lq = torch.rand(batch, 3, lq_size, lq_size, device=learner.device)
    gt = torch.rand(batch, 3, lq_size * scale, lq_size * scale, device=learner.device)
    return learner.train_on(lq, gt, learner.optimizer.param_groups[0]["lr"])


def probe_peak(learner: Learner, batch: int, lq_size: int, scale: int) -> int | None:
    """Peak memory of `PROBE_STEPS` real iterations at (`batch`, `lq_size`). An out-of-memory error
    anywhere in them (forward, backward, discriminator, optimizer) is recovered from as in
    training, outside the `except` block (its traceback holds the failed step's tensors), then
    raised again for the search to record."""
    try:
        return peak_memory_of(lambda: _synthetic_step(learner, batch, lq_size, scale), learner.accelerator)
    except torch.OutOfMemoryError as error:
        message = str(error)
    learner.recover_from_oom()
    raise torch.OutOfMemoryError(message)


def _confirm_compiled(learner: Learner, batch: int, lq_size: int, scale: int, budget: float, min_batch: int) -> int:
    """The searched batch run through the compiled forward training will use (its memory differs
    from the eager probes'): compiled here, once, at the chosen shape, and shrunk in proportion
    while its peak is over `budget`."""
    learner.compile()
    with learner.probing(compiled=True):
        while True:
            try:
                peak = probe_peak(learner, batch, lq_size, scale)
            except torch.OutOfMemoryError:
                peak = math.inf
            if peak is None or peak <= budget or batch <= min_batch:
                return batch
            batch = max(min_batch, min(batch - 1, int(batch * budget / peak)) if math.isfinite(peak) else batch // 2)


def search_batch_size(learner: Learner, cfg: DictConfig, batch: int, lq_size: int,
                      keep_lq_size: bool, largest_lq: int | None = None,
                      validator: Validator | None = None) -> tuple[int, int, Decision]:
    """The largest batch (and patch) fitting the tier's memory target (GPU), or the fastest batch
    within a RAM budget (CPU), starting from (`batch`, `lq_size`); no patch over `largest_lq` (the
    smallest training image). Every probe is a whole real iteration (the generator, a GAN's
    discriminator, the optimizer steps). The probes may cost at most `automation.batch.search_share` of the run's
    steps (counted at the starting size; a short run skips the search). On a GPU, `validator`'s
    tile is then run with the training's memory in use, and halved if it does not fit. Returns
    the chosen pair and the decision that explains it; the caller applies them."""
    auto, preset, scale = cfg.automation.batch, cfg.arch.preset, int(cfg.scale)
    accelerator = learner.accelerator
    # By memory on a GPU with a memory target; a GPU under the cpu tier (no target) is timed.
    by_memory = accelerator.is_gpu and auto.target_vram_usage is not None
    if not by_memory and cfg.train.deterministic:
        # Timing differs between runs; a deterministic run must not depend on it.
        return batch, lq_size, Decision(0, "batch", {}, "train.deterministic: no timed search on the CPU, "
                                        f"the tier's batch {batch} is kept")
    total_iter = int(cfg.train.total_iter)
    share = float(auto.search_share)
    bound = share * total_iter
    if not by_memory:
        per_sample = _bytes_per_sample(cfg, lq_size, feature_width(learner.module))
        budget = auto.ram_budget_fraction * psutil.virtual_memory().available
        sizes = cpu_sizes_to_time(_cpu_candidates(batch, auto), budget, per_sample, preferred=batch)
    # The least a search can do: on a GPU the first probe and one larger size; on the CPU a warm-up
    # and three timed steps of each size it chooses between (none where there is one).
    least = (PROBE_STEPS * 3 if by_memory
             else 4 * sum(c / batch for c in sizes) if len(sizes) > 1 else 0)
    if bound < least:
        fallback = ("an out-of-memory error would halve it, the memory watch adjusts it" if by_memory
                    else "no timing")
        return batch, lq_size, Decision(0, "batch", {}, (
            f"start-up search skipped: it would cost at least {least:.0f} steps, over {share:.0%} of this "
            f"{total_iter}-iteration run; the tier's batch {batch} is kept ({fallback})"))
    started = time.perf_counter()
    with learner.probing():
        if by_memory:
            total = accelerator.total_memory()

            def try_batch(size: int, lq: int) -> int | None:
                return probe_peak(learner, size, lq, scale)

            lq_sizes = [s for s in lq_candidates(lq_size, preset.lq_size_min, preset.lq_size_max)
                        if s <= cfg.hardware_tier.max_lq_size and (largest_lq is None or s <= largest_lq)]
            lq_sizes = lq_sizes or [lq_size]
            if keep_lq_size:
                lq_sizes = [lq_size]
            try:
                new_batch, new_lq, probes = find_batch_size(try_batch, batch, auto.max_batch_size, lq_sizes,
                                                            auto.target_vram_usage, auto.safety_margin, total,
                                                            auto.min_batch_size, cost_bound=bound)
            except UserError as error:
                raise UserError(f"{accelerator.name}: {error}") from None
            ran = [p for p in probes if p.why != NOT_RUN]
            why = (f"{len(ran)} probes of {PROBE_STEPS} real steps on {accelerator.name}: largest fitting "
                   f"{auto.target_vram_usage:.0%} of {memory_size(total)}")
            if len(ran) < len(probes):
                why += f", stopped at the cost bound ({share:.0%} of the run: {bound:.0f} steps)"
            if learner.will_compile and not learner.sync:
                confirmed = _confirm_compiled(learner, new_batch, new_lq, scale,
                                              memory_budget(total, auto.target_vram_usage, auto.safety_margin),
                                              int(auto.min_batch_size))
                if confirmed != new_batch:
                    why += f"; the compiled step needs more: {confirmed}"
                new_batch = confirmed
            if validator is not None:
                tile = validator.tile
                fitted = validator.fit_tile(learner.ema.module, learner.channels_last)
                why += (f"; validation fits in {fitted}px tiles" if validator.tile == tile
                        else f"; validation did not fit in {tile}px tiles: {validator.tile}px")
        else:
            new_lq = lq_size
            warmed: set[int] = set()

            def samples_per_second(size: int) -> float:
                if size not in warmed:  # the first step of a size pays the allocator and Adam state
                    _synthetic_step(learner, size, lq_size, scale)
                    warmed.add(size)
                begin = time.perf_counter()
                _synthetic_step(learner, size, lq_size, scale)
                return size / (time.perf_counter() - begin)

            new_batch, speeds = cpu_batch_size(samples_per_second, sizes, budget, per_sample, preferred=batch)
            rates = ", ".join(f"{b}: {s:.0f}" for b, s in sorted(speeds.items()))
            why = (f"measured samples/s ({rates}) within {budget / 2**30:.1f} GiB RAM: the tier's {batch} "
                   f"unless a larger one is over {CPU_CLEAR_GAIN:.0%} faster in each of {CPU_ROUNDS} interleaved "
                   "rounds (a smaller one trains on fewer samples in the same iterations)" if speeds else
                   f"no timing: {new_batch} is the only size to choose within {budget / 2**30:.1f} GiB RAM and "
                   f"automation.batch.max_batch_size={auto.max_batch_size} (none below the tier's {batch} "
                   "while it fits: a smaller one trains on fewer samples)")
    change = {}
    if new_batch != batch:
        change["batch_size"] = (batch, new_batch)
    if new_lq != lq_size:
        change["lq_size"] = (lq_size, new_lq)
    # Recorded even when nothing changed: the measurement is what justifies keeping the size.
    seconds = time.perf_counter() - started
    return new_batch, new_lq, Decision(0, "batch", change, f"start-up search in {seconds:.1f} s: {why}")


def _cpu_candidates(batch: int, auto) -> list[int]:
    """One octave either side of the tier's batch: throughput on a CPU is flat beyond that. The
    smaller one is measured only where the tier's does not fit the RAM budget (`cpu_sizes_to_time`)."""
    candidates = [b for b in (batch // 2, batch, batch * 2) if auto.min_batch_size <= b <= auto.max_batch_size]
    return candidates or [batch]


def _bytes_per_sample(cfg: DictConfig, lq_size: int, width: int) -> float:
    """RAM one sample costs in a step: input, target, and activations (measured on a tiny forward
    would need a profiler; estimated as 40 feature maps of the model's width, from its family
    spec, at HR size)."""
    scale = int(cfg.scale)
    hr_pixels = (lq_size * scale) ** 2
    return 4.0 * hr_pixels * (3 + 3 + 40 * width / scale**2)


def analyse_dataset(dataset, batch_size: int, seed: int, batches: int) -> dict[str, float]:
    """Scores of the first `batches` HR batches, from a stream of its own (the run's is untouched)."""
    stream = BatchStream(dataset, batch_size, seed + 1)
    try:
        return analyse(stream.next_batch()["gt"] for _ in range(batches))
    finally:
        stream.close()


def starting_lr(cfg: DictConfig, lr: LRController, user_set: set[str], measured: MeasuredLR | None,
                measured_s: float) -> Decision:
    """The start-up screen's and automation.jsonl's one line on the LR: the value the steps after
    the warm-up run at, each factor that made it, and what measuring it cost (`measured_s`).
    `measured` is the preset measurement of a network with no preset of its own (arch=custom, or
    an option with other arch.params), None for a built-in preset."""
    train, preset = cfg.train, cfg.arch.preset
    if "lr" in user_set:
        parts = [f"train.lr={float(train.lr):g} set by you"]
    elif measured is not None:
        how = "cached from an earlier start-up" if measured.cached else "measured at start-up"
        network = "this custom network" if cfg.arch.name == CUSTOM else f"{cfg.arch.name} with your arch.params"
        parts = [f"preset {float(preset.lr):g} for {network}, {how} by the range-test rule against "
                 f"{measured.anchor_option}"]
    else:
        parts = [f"{cfg.arch.name}'s preset {float(preset.lr):g} ({preset.lr_source})"]
    if float(train.lr_scale) != 1:
        parts.append(f"x train.lr_scale {float(train.lr_scale):g}")
    if lr.length_factor != 1:
        parts.append(f"x {lr.length_factor:g} for a {int(train.total_iter)}-iteration run "
                     "(automation.lr.run_length_factor)")
    if lr.base_lr != lr.preset_lr:
        parts.append(f"the LR range test moved it to {lr.base_lr:.3g}")
    if lr.factor != 1:
        parts.append(f"x {lr.factor:.3g} by the square-root rule for the batch")
    value = lr.base_lr * lr.factor
    schedule = ("constant after the warm-up, lowered on plateaus, cooled down at the end" if lr.enabled
                else "warm-up then cosine: automation.lr is off")
    cost = f"{measured_s:.1f} s of measurement" if measured_s > 0 else "nothing: no measurement"
    return Decision(0, "lr", {"start_lr": (None, value)},
                    f"starting LR {value:.3g}: {'; '.join(parts)}; {schedule}; cost {cost}")


def find_lr(cfg: DictConfig, dataset, lr: LRController) -> list[Decision]:
    """automation.lr.find: the network's divergence LR on this run's data, by the range test its
    preset was measured with (`zerosr.engine.preset_lr`), against the one recorded in its preset
    (`arch.preset.divergence_lr`, measured on the reference data). Where the loss diverges depends
    on the data; the base LR moves by the ratio of the two (geometric means over the seeds). The
    probe is a network of its own: the run's weights, optimizer and random state are untouched."""
    reference = cfg.arch.preset.divergence_lr
    if not reference:
        return [Decision(0, "lr", {}, "LR range test skipped: this preset records no divergence LR to compare "
                         "with; keeping the preset LR")]
    rng = capture_rng_state()
    try:
        probe = probe_config(cfg)
        ours = [divergence_lr(probe, dataset, seed) for seed in SEEDS]
    finally:
        restore_rng_state(rng)
    return lr.adopt_divergence_ratio(geometric_mean(ours) / geometric_mean(reference),
                                     f"divergence LR {format_lrs(ours)} on this data against {format_lrs(reference)} "
                                     f"in the preset (seeds {', '.join(map(str, SEEDS))})")
