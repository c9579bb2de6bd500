"""Per-variant training presets: starting points that the tier, the run and the automations refine.

The LR steps down with parameter count (small networks train fastest hot; the LR automation
lowers it on plateaus); run lengths grow from 40k iterations (nano) to 150k (xl). The network
hyper-parameters themselves live in `zerosr.archs.variants` (one source of truth); this table only
says how to train each variant.

nano's LR is chosen by the long-run benchmark, `python bench/quality.py --iters 6000` and
`--iters 600 --seeds 0 1 2` (batch 8, 32 px, BSD100 x2): warm-up + cosine gave 32.37 / 32.52 /
32.66 / 32.65 dB at 1e-3 / 2e-3 / 4e-3 / 8e-3 after 6000 iterations, so 4e-3, where the curve
tops out; at 600 iterations every LR from 3e-3 to 6e-3 ends within 0.01 dB.

The LRs of s, m, l and xl come from the LR range test: `python bench/lr_presets.py --data
BSD100_X2 --seed 0` and `--seed 1` (batch 4, 24 px, the same LR grid for every variant) give each
variant's `from_nano_lr`: 1e-3 x (the LR at which its curve diverges / nano's) x sqrt(batch hint /
nano's 32), the square-root rule because a preset runs at the variant's own tier batch. The
preset is the geometric mean over the two seeds, rounded down to the E6 series (1, 1.5, 2.2, 3.3,
4.7, 6.8): up to a step below the measurement, whose seed-to-seed spread is about 30 %. The
steepest-descent point is not used: at this batch it moves tenfold with the order of the batches.
The same rule puts micro, tiny and xs within 25 % of their values here. The rule's 1e-3 is nano's
earlier preset: the long-run benchmark has been run on nano only, so the larger variants keep the
LRs measured against it rather than 4x them unmeasured.
"""

from __future__ import annotations

VARIANT_ORDER = ("nano", "micro", "tiny", "xs", "s", "m", "l", "xl")

# lr, batch-size hint, total iterations, warm-up iterations, EMA decay, AdamW weight decay
_TRAINING = {
    "nano": (4e-3, 32, 40_000, 1_000, 0.999, 0.0),
    "micro": (7e-4, 32, 50_000, 1_000, 0.999, 0.0),
    "tiny": (5e-4, 24, 60_000, 1_500, 0.999, 0.0),
    "xs": (4e-4, 16, 70_000, 1_500, 0.999, 0.0),
    "s": (2.2e-4, 16, 80_000, 2_000, 0.999, 0.0),
    "m": (1e-4, 8, 100_000, 2_500, 0.9995, 1e-4),
    "l": (6.8e-5, 6, 120_000, 3_000, 0.9995, 1e-4),
    "xl": (4.7e-5, 4, 150_000, 4_000, 0.9995, 1e-4),
}

# Dynamic loss scheduling per variant (larger networks: smoother trends, slower, wider moves):
# momentum, adaptation_rate, max_weight, adaptation_threshold, baseline_iterations.
LOSS_SCHEDULE = {
    "nano": (0.85, 0.015, 5.0, 0.04, 50),
    "micro": (0.87, 0.012, 7.5, 0.05, 75),
    "tiny": (0.89, 0.010, 10.0, 0.06, 100),
    "xs": (0.91, 0.008, 15.0, 0.07, 125),
    "s": (0.93, 0.006, 20.0, 0.08, 150),
    "m": (0.95, 0.005, 30.0, 0.10, 200),
    "l": (0.96, 0.004, 50.0, 0.12, 250),
    "xl": (0.97, 0.003, 100.0, 0.15, 300),
}
LOSS_SCHEDULE_KEYS = ("momentum", "adaptation_rate", "max_weight", "adaptation_threshold",
                      "baseline_iterations")


def variant_of(arch_name: str) -> str:
    """`paragonsr2_xs` -> `xs`. An exact suffix match: a loose pattern would send every name to nano."""
    prefix, _, variant = arch_name.rpartition("_")
    if prefix != "paragonsr2" or variant not in VARIANT_ORDER:
        raise KeyError(f"not a ParagonSR2 variant: {arch_name!r}")
    return variant


def training_preset(variant: str) -> dict:
    lr, batch, total, warmup, ema, weight_decay = _TRAINING[variant]
    return {
        "lr": lr,
        "batch_size": batch,
        "total_iter": total,
        "warmup_iter": warmup,
        "ema_decay": ema,
        "betas": [0.9, 0.99],
        "weight_decay": weight_decay,
        "lq_size": 64,
        "lq_size_min": 32,
        "lq_size_max": 128 if VARIANT_ORDER.index(variant) < VARIANT_ORDER.index("m") else 96,
    }


def loss_schedule_preset(arch_name: str) -> dict:
    return dict(zip(LOSS_SCHEDULE_KEYS, LOSS_SCHEDULE[variant_of(arch_name)]))
