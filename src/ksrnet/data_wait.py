"""How much of a training run's wall time the training loop spends waiting for its next batch.

On the lent H100 the GPU sampled 11-56 % busy while 14 data workers generated tracks, which says
that something other than the GPU set the pace, but not whether it was the data workers or the
training loop's own host-side work (kernel launches, optimizer, logging). This meter answers it
from inside the run, at no cost: the time between the end of one training batch and the start of
the next is the time spent fetching a batch, i.e. waiting for the workers; everything else is the
step. Logged as ``perf/data_wait`` (the fraction of wall time over the last ``window`` steps) beside
the losses in the run's metrics.csv.
"""

from __future__ import annotations

import time
from collections import deque

import lightning as L


class DataWaitMeter(L.Callback):
    """Logs ``perf/data_wait``: the share of the last ``window`` steps' wall time spent between batches."""

    def __init__(self, window: int = 50, clock=time.perf_counter) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.clock = clock
        self.spans: deque[tuple[float, float]] = deque(maxlen=window)  # (waited, stepped) per step
        self.batch_started: float | None = None
        self.batch_ended: float | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        # An epoch starts its DataLoader afresh (workers spawn, buffers fill): not a steady-state wait.
        self.batch_ended = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batch_started = self.clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = self.clock()
        if self.batch_started is None:
            return
        waited = 0.0 if self.batch_ended is None else self.batch_started - self.batch_ended
        self.spans.append((waited, now - self.batch_started))
        self.batch_ended = now
        # Every step, so that whichever steps the logger keeps (log_every_n_steps) carry the figure.
        total = sum(w + s for w, s in self.spans)
        if total > 0:
            pl_module.log("perf/data_wait", sum(w for w, _ in self.spans) / total, on_step=True, on_epoch=False,
                          batch_size=1)


def summary(metrics_csv: str) -> str:
    """One line on a finished run's perf/data_wait: its median over the second half of the logged
    steps (the first half holds the workers' start and warm-up)."""
    import csv
    import statistics

    with open(metrics_csv, newline="") as f:
        waits = [float(r["perf/data_wait"]) for r in csv.DictReader(f) if r.get("perf/data_wait")]
    if not waits:
        return f"{metrics_csv}: no perf/data_wait logged"
    late = waits[len(waits) // 2:]
    return (f"waiting for data: {100 * statistics.median(late):.0f} % of the training loop's wall time "
            f"(median of the last {len(late)} logged steps; 0 = the loop never waits, the workers keep up)")


if __name__ == "__main__":
    import sys

    print(summary(sys.argv[1]))
