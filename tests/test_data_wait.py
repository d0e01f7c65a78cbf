"""perf/data_wait: the share of a run's wall time spent waiting for the next batch."""

from __future__ import annotations

import pytest

from ksrnet.data_wait import DataWaitMeter


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Module:
    def __init__(self) -> None:
        self.logged: list[float] = []

    def log(self, name, value, **_) -> None:
        assert name == "perf/data_wait"
        self.logged.append(value)


def _run(meter: DataWaitMeter, clock: _Clock, module: _Module, steps: list[tuple[float, float]]) -> None:
    """Steps as (seconds waited for the batch, seconds of the step itself)."""
    for i, (wait, step) in enumerate(steps):
        clock.now += wait
        meter.on_train_batch_start(None, module, None, i)
        clock.now += step
        meter.on_train_batch_end(None, module, None, None, i)


def test_the_wait_between_batches_is_the_share_of_wall_time_reported():
    clock, module = _Clock(), _Module()
    meter = DataWaitMeter(window=4, clock=clock)
    meter.on_train_epoch_start(None, module)
    # The first batch's wait (workers starting) is not counted; then 3 s waited per 1 s step.
    _run(meter, clock, module, [(30.0, 1.0)] + [(3.0, 1.0)] * 3)
    assert module.logged[0] == 0.0
    assert module.logged[-1] == pytest.approx(9 / 13)  # windows: (0, 1) and three (3, 1)
    # The window forgets older steps: four steps that never wait.
    _run(meter, clock, module, [(0.0, 2.0)] * 4)
    assert module.logged[-1] == 0.0


def test_a_new_epoch_does_not_count_its_start_up_as_waiting():
    clock, module = _Clock(), _Module()
    meter = DataWaitMeter(window=10, clock=clock)
    _run(meter, clock, module, [(0.0, 1.0)] * 2)
    meter.on_train_epoch_start(None, module)
    _run(meter, clock, module, [(50.0, 1.0)])  # the loader's workers spawning again
    assert module.logged[-1] == 0.0


def test_a_window_below_one_is_refused():
    with pytest.raises(ValueError, match="window"):
        DataWaitMeter(window=0)


def test_a_recognizer_run_logs_the_wait_beside_its_losses(tmp_path):
    import csv

    import ksrnet.training as training
    from ksrnet.train_config import TrainConfig

    config = TrainConfig.from_dict({
        "model": {"preset": "tiny", "embed_dim": 32, "enc_depth": 1, "enc_heads": 2, "dec_heads": 2, "stem": "patch"},
        "data": {"synth_tracks_per_epoch": 40, "val_tracks": 2, "num_workers": 0},
        "trainer": {"max_epochs": 1, "batch_tracks": 4, "checkpoint_every_n_steps": 100},
    })  # 10 steps: the logger keeps every 10th
    training.train(config, tmp_path / "run", progress=False)
    rows = list(csv.DictReader(next((tmp_path / "run" / "logs").rglob("metrics.csv")).open()))
    waits = [float(r["perf/data_wait"]) for r in rows if r.get("perf/data_wait")]
    assert waits and all(0.0 <= w < 1.0 for w in waits)
    assert any(r.get("train/loss") for r in rows if r.get("perf/data_wait"))  # on the rows of the losses


def test_the_summary_takes_the_median_of_the_later_steps(tmp_path):
    from ksrnet.data_wait import summary

    log = tmp_path / "metrics.csv"
    log.write_text("step,train/loss,perf/data_wait\n0,3.0,0.9\n9,2.0,0.8\n10,1.9,\n19,1.5,0.2\n29,1.2,0.3\n39,1.1,0.25\n")
    assert summary(str(log)).startswith("waiting for data: 25 % of the training loop's wall time (median of the last 3")
    log.write_text("step,train/loss\n9,2.0\n")
    assert "no perf/data_wait logged" in summary(str(log))
