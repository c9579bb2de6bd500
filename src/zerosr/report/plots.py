"""PNG plots of a run's metrics.jsonl: loss, each validation metric (model and bicubic), learning
rate and batch size against iteration.

Figures are drawn with matplotlib's Agg canvas directly (no pyplot, no display, no global backend
switch) and each PNG is replaced atomically, so a viewer never sees a half-written image.
"""

from __future__ import annotations

import math
from pathlib import Path

from zerosr.atomic import atomic_save
from zerosr.metrics.catalog import METRICS
from zerosr.report.logs import METRICS_FILE, read_jsonl

PLOTS_DIR = "plots"

Series = dict[str, tuple[list[float], list[float]]]


def write_plots(run_dir: Path) -> list[Path]:
    """Write RUN/plots/{loss,psnr,ssim,lpips,dists,...,lr,batch_size}.png from RUN/metrics.jsonl
    (one per validation metric the run computed); return those written.

    A plot whose metrics never appear is skipped (and an older PNG of it is left as it is).
    """
    run_dir = Path(run_dir)
    metrics_path = run_dir / METRICS_FILE
    if not metrics_path.is_file():
        return []
    records = read_jsonl(metrics_path)

    loss_keys = sorted({k for r in records for k in r if k == "loss" or k.startswith("loss/")})
    plots = [
        ("loss.png", "training loss", _collect(records, loss_keys), True, False),
        *((f"{m.name}.png", f"validation {m.label}" + (f" ({m.unit})" if m.unit else "")
           + ("" if m.higher_is_better else ", lower is better"),
           _collect(records, [m.key, f"val/bicubic_{m.name}"]), False, False) for m in METRICS.values()),
        ("lr.png", "learning rate", _collect(records, ["lr"]), True, False),
        ("batch_size.png", "batch size", _collect(records, ["batch_size"]), False, True),
    ]
    written = []
    for file_name, ylabel, series, log_scale, steps in plots:
        if not series:
            continue
        path = run_dir / PLOTS_DIR / file_name
        _draw(path, ylabel, series, log_scale=log_scale, steps=steps)
        written.append(path)
    return written


def _collect(records: list[dict], keys: list[str]) -> Series:
    """Finite numeric (iteration, value) points per key; keys with no points are left out."""
    series: Series = {}
    for key in keys:
        xs, ys = [], []
        for record in records:
            value, iteration = record.get(key), record.get("iter")
            if _is_plottable(value) and _is_plottable(iteration):
                xs.append(float(iteration))
                ys.append(float(value))
        if xs:
            series[key] = (xs, ys)
    return series


def _is_plottable(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _draw(path: Path, ylabel: str, series: Series, log_scale: bool, steps: bool) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for key, (xs, ys) in series.items():
        style = "--" if "bicubic" in key else "-"
        marker = "o" if len(xs) < 30 else None  # sparse series (validations) need visible points
        if steps:
            axes.step(xs, ys, where="post", label=key)
        else:
            axes.plot(xs, ys, style, marker=marker, markersize=3, label=key)
    # Loss and LR span decades; a log axis needs every value positive.
    if log_scale and all(y > 0 for _, ys in series.values() for y in ys):
        axes.set_yscale("log")
    axes.set_xlabel("iteration")
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    if len(series) > 1:
        axes.legend()
    figure.tight_layout()
    atomic_save(lambda tmp: figure.savefig(tmp, format="png"), path)
