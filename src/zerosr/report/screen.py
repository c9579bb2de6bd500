"""Log records on the start-up screen, in its layout: a label column of 13, then the message.

Used by `conf/hydra/job_logging/zerosr.yaml`: warnings and errors of zerosr and its libraries read
`warning      ...` like zerosr's own lines; INFO lines (e.g. what the data cache holds) show only
with `hydra.verbose` (all, or the named loggers), labelled with the logger's last name.
"""

from __future__ import annotations

import logging

LABEL_WIDTH = 13  # "preflight    ", "warning      ": the screen's first column


class ScreenFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if record.levelno >= logging.ERROR:
            label = "error"
        elif record.levelno >= logging.WARNING:
            label = "warning"
        else:
            label = record.name.rsplit(".", 1)[-1]
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        first, *rest = text.splitlines() or [""]
        head = f"{label[:LABEL_WIDTH - 1]:<{LABEL_WIDTH - 1}} "
        return "\n".join([head + first, *(" " * LABEL_WIDTH + line for line in rest)])


class InfoWhenVerbose(logging.Filter):
    """Warnings always; lower levels when `hydra.verbose` made their logger (or the root) DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
