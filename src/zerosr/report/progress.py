"""Training progress display: a tqdm bar on a terminal, plain periodic lines otherwise.

On a TTY the bar redraws in place (iteration/total, it/s, ETA, loss, LR, batch size). When the
stream is a file or pipe (CI, `> train.log`), carriage-return redraws would fill the log with
garbage, so one plain line is printed every `plain_every` iterations instead.
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from typing import TextIO

from tqdm import tqdm


class Progress:
    def __init__(
        self,
        total: int,
        start: int = 0,
        enabled: bool = True,
        stream: TextIO | None = None,
        plain_every: int | None = None,
    ):
        """`plain_every` (non-TTY only) defaults to 1% of the run, between 1 and 1000 iterations."""
        self.total = total
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stdout
        self.plain_every = plain_every or max(1, min(1000, total // 100))
        self._bar: tqdm | None = None
        self._last_iteration = start
        self._last_time = time.perf_counter()
        self._last_printed = start
        if enabled and _is_tty(self.stream):
            self._bar = tqdm(
                total=total,
                initial=start,
                file=self.stream,
                unit="it",
                dynamic_ncols=True,
                smoothing=0.05,
            )

    def update(self, iteration: int, loss: float, lr: float, batch_size: int) -> None:
        if not self.enabled:
            return
        stats = f"loss {float(loss):.4g} | lr {float(lr):.2e} | bs {int(batch_size)}"
        if self._bar is not None:
            self._bar.set_postfix_str(stats, refresh=False)
            self._bar.update(iteration - self._bar.n)
            return
        if iteration - self._last_printed >= self.plain_every or iteration >= self.total:
            self._print_plain_line(iteration, stats)

    def write(self, message: str) -> None:
        """Print a message above the bar (or as a plain line) without garbling the bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _print_plain_line(self, iteration: int, stats: str) -> None:
        now = time.perf_counter()
        elapsed = now - self._last_time
        done = iteration - self._last_iteration
        rate = done / elapsed if elapsed > 0 and done > 0 else 0.0
        eta = _format_duration((self.total - iteration) / rate) if rate > 0 else "?"
        percent = 100.0 * iteration / self.total if self.total else 100.0
        print(
            f"iter {iteration}/{self.total} ({percent:.1f}%) | {rate:.2f} it/s | ETA {eta} | {stats}",
            file=self.stream,
            flush=True,
        )
        # Rate over the last printed window only, so the ETA follows speed changes such as
        # automatic batch-size changes instead of averaging over the whole run.
        self._last_iteration = iteration
        self._last_time = now
        self._last_printed = iteration


def _is_tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _format_duration(seconds: float) -> str:
    return str(timedelta(seconds=int(max(seconds, 0))))
