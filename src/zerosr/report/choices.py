"""One screen that says what zerosr chose for this run and why."""

from __future__ import annotations

from collections.abc import Iterable

from omegaconf import DictConfig, OmegaConf

from zerosr.detect import COMPILE_OFF_ON_WINDOWS, Hardware, generation, on_windows, tier_for
from zerosr.losses import is_adversarial
from zerosr.metrics import catalog


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


def _network(arch: DictConfig) -> str:
    if arch.name == "custom":
        return f"custom {arch.get('_target_')}"
    return str(arch.name)


def describe_choices(cfg: DictConfig, hardware: Hardware, user_set: Iterable[str] = (),
                     warnings: Iterable[str] = ()) -> str:
    """Tier, preset, training values and the automations' derived parameters, resolved; the keys
    the user set (`user_set`, dotted) are listed as "set by you", then one `warning` line each for
    the `warnings` given (values set far outside what works)."""
    tier, train, auto = cfg.hardware_tier, cfg.train, cfg.automation
    user_set = set(user_set)
    detected = tier_for(hardware)
    why_tier = "detected" if tier.name == detected else f"set by you; this machine would be '{detected}'"
    if train.lr is None:
        lr_text = "lr measured at start-up"
    else:
        lr = float(train.lr) * float(train.lr_scale)
        lr_text = f"lr {lr:g}" + (f" = {train.lr:g} x train.lr_scale {train.lr_scale:g}" if train.lr_scale != 1 else "")
    run_length = float(auto.lr.run_length_factor)
    if auto.enabled and auto.lr.enabled and "train.lr" not in user_set and run_length != 1:
        lr_text += f" x {run_length:g} for a run this short"
    preset = cfg.arch.preset
    preset_lr = "measured at start-up" if preset.lr is None else f"{preset.lr:g} ({preset.lr_source})"
    lines = [
        f"hardware     {_hardware_line(hardware)}",
        f"tier         {tier.name} ({why_tier}): precision {tier.precision}, compile "
        f"{'on' if tier.compile else 'off'}, channels_last {'on' if tier.channels_last else 'off'}, "
        f"{tier.num_workers} loader workers",
        f"arch         {_network(cfg.arch)} x{cfg.scale}; preset lr {preset_lr}, batch hint "
        f"{cfg.arch.preset.batch_size}, {cfg.arch.preset.total_iter} iterations",
        f"train        {train.total_iter} iterations, {lr_text} (warm-up {train.warmup_iter}), "
        f"batch {train.batch_size} x {train.lq_size}px LR patches, EMA {train.ema_decay}",
        f"             validate every {train.val_freq}, save every {train.save_freq}, "
        f"log every {train.log_freq}",
        f"dataset      {cfg.data.name}" + (f": {cfg.data.gt_path} / {cfg.data.lq_path or 'bicubic LR'}"
                                         if cfg.data.gt_path else ""),
    ]
    if on_windows() and hardware.has_gpu and not tier.compile and "hardware_tier.compile" not in user_set:
        lines.append(f"compile      {COMPILE_OFF_ON_WINDOWS}")
    lines += _selection_lines(cfg, user_set)
    lines += _automation_lines(auto)
    lines += _gan_line(cfg, user_set)
    shown = _user_values(cfg, user_set)
    if shown:
        lines.append(f"set by you   {', '.join(shown)}")
    lines += [f"warning      {line}" for line in warnings]
    return "\n".join(lines)


def _automation_lines(auto: DictConfig) -> list[str]:
    """One line per automation that is on; the ones that are off named together."""
    described = {
        "lr": lambda a: f"lr: plateau patience {a.plateau_patience}, factors [{a.min_lr_factor}, "
                        f"{a.max_lr_factor}], cool-down over the last {a.cooldown_fraction:.0%} of the run",
        "batch": lambda a: f"batch: target VRAM {a.target_vram_usage}, margin {a.safety_margin}, re-check "
                           f"every {a.adjust_every}, max {a.max_batch_size}",
        "clip": lambda a: f"clip: p{a.percentile} of the last {a.history} gradient norms",
        "early_stop": lambda a: f"early stop: patience {a.patience} iterations, min delta {a.min_delta}, "
                                f"not before {a.min_iter}",
        "loss_schedule": lambda a: f"loss schedule: momentum {a.momentum}, rate {a.adaptation_rate}, max "
                                   f"weight {a.max_weight}",
        "dataset_analysis": lambda a: f"dataset analysis on {a.batches} batches",
    }
    on = [name for name in described if auto.enabled and auto[name].enabled]
    off = [name for name in described if name not in on]
    lines = [described[name](auto[name]) for name in on]
    if off:
        fixed = " (fixed batch, warm-up then cosine LR)" if "lr" in off and "batch" in off else ""
        lines.append("off: " + ", ".join(name.replace("_", " ") for name in off) + fixed)
    return [("automation   " if i == 0 else "             ") + line for i, line in enumerate(lines)]


def _selection_lines(cfg: DictConfig, user_set: set[str]) -> list[str]:
    """Which metric picks the best model (and drives early stop, LR plateaus, sweeps), and why."""
    train = cfg.train
    select = catalog.metric(train.select_metric)
    losses = OmegaConf.to_container(train.losses, resolve=True)
    why = "set by you" if "train.select_metric" in user_set else catalog.select_reason(losses)
    better = "higher" if select.higher_is_better else "lower"
    computed = catalog.computed(train.val_metrics, select.name)
    source = "set by you" if "train.val_metrics" in user_set else "derived from train.losses"
    return [f"select       {select.name} ({better} is better; {why}): best model, early stop, LR plateaus, sweeps",
            f"val metrics  {', '.join(computed)} ({source}; train.val_metrics sets them)"]


def _gan_line(cfg: DictConfig, user_set: set[str]) -> list[str]:
    """When the adversarial term joins (automation.loss_schedule.gan_delay), and why."""
    found = [(index, entry) for index, entry in enumerate(cfg.train.losses)
             if OmegaConf.is_dict(entry) and is_adversarial(entry.get("_target_", ""))]
    if not found:
        return []
    index, entry = found[0]
    delay, total = int(cfg.automation.loss_schedule.gan_delay), int(cfg.train.total_iter)
    if "automation.loss_schedule.gan_delay" in user_set:
        why = "set by you"
    elif cfg.train.pretrain:
        why = "train.pretrain: the network is trained already"
    elif delay:
        why = "derived: the other losses train the network from scratch first; automation.loss_schedule.gan_delay sets it"
    else:
        why = f"automation={cfg.automation.name}"
    when = f"after iteration {delay} of {total}" if delay else "from the first iteration"
    weight = entry.get("weight", 1.0)
    return [f"gan          train.losses.{index} (weight {weight}) joins {when} ({why})"]


def _user_values(cfg: DictConfig, keys: set[str], width: int = 48) -> list[str]:
    """`key=value` for each key the user set that the config holds (not Hydra's own keys)."""
    shown = []
    for key in sorted(keys):
        if not key or key.startswith("hydra.") or OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
            continue
        value = OmegaConf.select(cfg, key)
        if OmegaConf.is_dict(value) and "name" in value:  # a group option: arch=..., automation=off
            value = value.name
        text = str(OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value)
        shown.append(f"{key}={text if len(text) <= width else text[:width - 3] + '...'}")
    return shown


_ABSENT = object()
