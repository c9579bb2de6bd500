"""One screen that says what zerosr chose for this run and why."""

from __future__ import annotations

from omegaconf import DictConfig

from zerosr.detect import Hardware, generation, tier_for


def _hardware_line(hardware: Hardware) -> str:
    if not hardware.has_gpu:
        return (f"no CUDA GPU; {hardware.cpu_physical_cores} physical / {hardware.cpu_logical_cores} "
                f"logical CPU cores, {hardware.ram_gb:.1f} GB RAM")
    gpu = hardware.gpus[0]
    more = f" (x{len(hardware.gpus)})" if len(hardware.gpus) > 1 else ""
    major, minor = gpu.compute_capability
    return (f"{gpu.name}{more}, {gpu.vram_gb:.1f} GB VRAM, compute {major}.{minor} "
            f"({generation(gpu.compute_capability)}); {hardware.cpu_logical_cores} CPU threads, "
            f"{hardware.ram_gb:.1f} GB RAM")


def describe_choices(cfg: DictConfig, hardware: Hardware) -> str:
    """Tier, preset, training values and the automations' derived parameters, resolved."""
    tier, train, auto = cfg.hardware_tier, cfg.train, cfg.automation
    detected = tier_for(hardware)
    why_tier = ("detected" if tier.name == detected
                else f"set on the command line; this machine would be '{detected}'")
    lines = [
        f"hardware     {_hardware_line(hardware)}",
        f"tier         {tier.name} ({why_tier}): precision {tier.precision}, compile "
        f"{'on' if tier.compile else 'off'}, channels_last {'on' if tier.channels_last else 'off'}, "
        f"{tier.num_workers} loader workers",
        f"arch         {cfg.arch.name} x{cfg.scale}; preset lr {cfg.arch.preset.lr:g}, batch hint "
        f"{cfg.arch.preset.batch_size}, {cfg.arch.preset.total_iter} iterations",
        f"train        {train.total_iter} iterations, lr {train.lr:g} (warm-up {train.warmup_iter}), "
        f"batch {train.batch_size} x {train.lq_size}px LR patches, EMA {train.ema_decay}",
        f"             validate every {train.val_freq}, save every {train.save_freq}, "
        f"log every {train.log_freq}",
        f"dataset      {cfg.data.name}" + (f": {cfg.data.gt_path} / {cfg.data.lq_path or 'bicubic LR'}"
                                         if cfg.data.gt_path else ""),
    ]
    if not auto.enabled:
        lines.append("automation   off: fixed batch, warm-up then cosine LR schedule")
    else:
        lines += [
            f"automation   lr: plateau patience {auto.lr.plateau_patience}, factors "
            f"[{auto.lr.min_lr_factor}, {auto.lr.max_lr_factor}], cool-down {auto.lr.cooldown}",
            f"             batch: target VRAM {auto.batch.target_vram_usage}, margin "
            f"{auto.batch.safety_margin}, re-check every {auto.batch.adjust_every}, max {auto.batch.max_batch_size}",
            f"             clip: p{auto.clip.percentile} of the last {auto.clip.history} gradient norms",
            f"             early stop: patience {auto.early_stop.patience} iterations, min delta "
            f"{auto.early_stop.min_delta} dB, not before {auto.early_stop.min_iter}",
            f"             loss schedule: momentum {auto.loss_schedule.momentum}, rate "
            f"{auto.loss_schedule.adaptation_rate}, max weight {auto.loss_schedule.max_weight}; "
            f"dataset analysis on {auto.dataset_analysis.batches} batches",
        ]
    return "\n".join(lines)
