"""Stats for every run, in every mode: counts and timings that add up."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

import parallax
from conftest import Backend
from faults import FailOnce, InjectedError
from helpers import fail_on, nap
from parallax._stats import PROBE_WORKER, _kinds, _rows


def test_counts_and_timings_are_consistent(backend: Backend) -> None:
    with parallax.monitor() as monitor:
        backend.map(fail_on({3}), range(200), errors="return", chunksize=7)
    stats = monitor.runs[-1]
    assert stats.mode == backend.mode and stats.reason
    assert stats.tasks == 200 and stats.failed == 1
    records = stats.task_records
    assert sorted(record.index for record in records) == list(range(200))  # each task once
    for record in records:
        assert record.queued <= record.started <= record.finished
        assert record.started >= 0
        assert record.finished <= stats.wall_time + 1e-6
        assert record.outcome == ("error" if record.index == 3 else "ok")
    workers = stats.worker_records
    assert sum(worker.tasks for worker in workers) == 200
    for worker in workers:
        assert worker.busy <= stats.wall_time + 1e-6
        assert 0 <= worker.utilisation <= 1
        assert worker.idle == pytest.approx(max(0.0, stats.wall_time - worker.busy))
    assert 0 <= stats.efficiency <= 1
    assert stats.throughput > 0


def test_monitor_collects_every_run_inside_it() -> None:
    with parallax.monitor() as monitor:
        parallax.map(abs, range(10), mode="serial")
        parallax.map(abs, range(20), mode="thread")
    assert [(run.mode, run.tasks) for run in monitor.runs] == [("serial", 10), ("thread", 20)]
    table = monitor.summary()
    assert "serial" in table and "thread" in table
    parallax.map(abs, range(5), mode="serial")
    assert len(monitor.runs) == 2  # nothing recorded after the block


def test_monitor_sees_runs_in_other_threads() -> None:
    import threading

    with parallax.monitor() as monitor:
        thread = threading.Thread(target=lambda: parallax.map(abs, range(3), mode="serial"))
        thread.start()
        thread.join()
    assert len(monitor.runs) == 1


def test_summary_and_dict() -> None:
    with parallax.monitor() as monitor:
        parallax.map(nap, [0.001] * 10 + [0.05], mode="thread", workers=2)
    stats = monitor.runs[-1]
    text = stats.summary()
    for expected in ("mode", "thread", "workers", "tasks", "wall time", "efficiency", "slowest"):
        assert expected in text
    assert stats.slowest(1)[0][0] == 10  # the 50 ms item, with its input
    assert stats.slowest(1)[0][2] == "0.05"
    data = json.loads(json.dumps(stats.to_dict()))
    assert data["tasks"] == 11 and len(data["task_records"]) == 11
    assert {"mode", "reason", "workers", "chunksize", "wall_time", "throughput", "efficiency",
            "overhead", "worker_records", "slowest"} <= set(data)
    assert "task_records" not in stats.to_dict(tasks=False)


def test_per_task_records_can_be_turned_off() -> None:
    with parallax.monitor() as monitor:
        parallax.map(abs, range(100), mode="thread", record_tasks=False)
    stats = monitor.runs[-1]
    assert stats.tasks == 100 and not stats.records_kept
    assert stats.task_records == []


def test_chrome_trace_is_valid_trace_event_json(tmp_path: Path) -> None:
    with parallax.monitor() as monitor:
        parallax.map(nap, [0.001] * 8, mode="thread", workers=2, chunksize=1)
    path = monitor.runs[-1].to_chrome_trace(tmp_path / "trace.json")
    trace = json.loads(path.read_text())
    slices = [event for event in trace["traceEvents"] if event["ph"] == "X"]
    items = [event for event in slices if event["cat"] in ("ok", "error")]
    runs = [event for event in slices if event["cat"] == "run"]
    tracks = [event for event in trace["traceEvents"] if event.get("name") == "thread_name"]
    assert len(items) == 8 and len(runs) == 1 and len(slices) == 9
    assert len(tracks) == len({event["tid"] for event in slices})
    assert all(event["dur"] >= 0 and event["ts"] >= 0 for event in slices)


def test_timeline_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    with parallax.monitor() as monitor:
        parallax.map(nap, [0.002] * 12, mode="thread", workers=3, chunksize=1)
    path = monitor.runs[-1].plot_timeline(tmp_path / "timeline.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100 and height > 50


def test_executor_stats_accumulate(backend: Backend) -> None:
    with backend.executor(workers=2) as executor:
        assert executor.stats.tasks == 0
        list(executor.imap(backend.fn(abs), range(30)))
        assert executor.stats.tasks == 30
        list(executor.imap(backend.fn(abs), range(5)))
        assert executor.stats.tasks == 35


def test_summary_without_task_records_still_adds_up() -> None:
    with parallax.monitor() as monitor:
        parallax.map(nap, [0.005] * 20, mode="thread", workers=4, record_tasks=False)
    stats = monitor.runs[-1]
    assert stats.busy_time >= 20 * 0.005
    assert stats.efficiency > 0
    assert stats.overhead < stats.wall_time


def test_a_recorder_publishes_its_records_once_when_the_run_ends() -> None:
    from time import perf_counter

    from parallax._recorder import StatsRecorder
    from parallax._units import Chunk, ChunkResult

    recorder = StatsRecorder("serial", "because", 1, "auto")
    with pytest.raises(RuntimeError):
        recorder.stats  # noqa: B018 - no stats before the run ends
    recorder.begin()
    chunk = Chunk.fresh(0, 0, ["a", "b"])
    started = perf_counter()
    recorder.add(ChunkResult(chunk, [1, 2], worker="w", started=started,
                             finished=started + 0.5))
    recorder.retried(1)
    recorder.failed(1, ValueError())
    with parallax.monitor() as monitor:
        stats = recorder.end(2, chunksize=2)
        assert recorder.end(2) is stats  # a second end publishes nothing new
    assert monitor.runs == [stats]
    assert (stats.tasks, stats.failed, stats.retried, stats.chunksize) == (2, 1, 1, 2)
    assert stats.busy_time == pytest.approx(0.5)
    assert [record.index for record in stats.task_records] == [0, 1]
    assert [record.attempt for record in stats.task_records] == [1, 2]



# -- Monitor exports and the timeline picture ----------------------------------------------


def is_png(path: Path) -> bool:
    data = path.read_bytes()
    width, height = struct.unpack(">II", data[16:24])
    return data[:8] == b"\x89PNG\r\n\x1a\n" and width > 100 and height > 50


def test_monitor_chrome_trace_has_a_process_per_run(backend: Backend, tmp_path: Path) -> None:
    with parallax.monitor() as monitor:
        backend.map(fail_on({2}), range(10), errors="return")
        backend.map(abs, range(5))
    path = monitor.to_chrome_trace(tmp_path / "runs.json")
    events = json.loads(path.read_text())["traceEvents"]
    names = {event["pid"]: event["args"]["name"] for event in events
             if event["name"] == "process_name"}
    assert names == {1: f"run 1: parallax {backend.mode}", 2: f"run 2: parallax {backend.mode}"}
    items = [event for event in events if event.get("cat") in ("ok", "error")]
    assert sorted((event["pid"], event["args"]["index"]) for event in items) == [
        *((1, index) for index in range(10)), *((2, index) for index in range(5))]
    assert [event["args"]["index"] for event in items if event["cat"] == "error"] == [2]
    first, second = (next(event for event in events
                          if event.get("cat") == "run" and event["pid"] == pid) for pid in (1, 2))
    # one clock: the second run starts after the first one ended
    assert first["ts"] >= 0 and second["ts"] >= first["ts"] + first["dur"] - 1e3
    for event in items:
        run = first if event["pid"] == 1 else second
        assert run["ts"] - 1 <= event["ts"] <= run["ts"] + run["dur"] + 1


def test_monitor_timeline_png(backend: Backend, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    with parallax.monitor() as monitor:
        backend.map(fail_on({2}), range(10), errors="return")
        backend.map(abs, range(5), record_tasks=False)
    assert is_png(monitor.plot_timeline(tmp_path / "runs.png"))


def test_an_empty_monitor_exports_nothing_but_valid_files(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    with parallax.monitor() as monitor:
        pass
    events = json.loads(monitor.to_chrome_trace(tmp_path / "none.json").read_text())
    assert events["traceEvents"] == []
    assert is_png(monitor.plot_timeline(tmp_path / "none.png"))


def test_kinds_of_items_failed_retried_and_recovered(backend: Backend, tmp_path: Path) -> None:
    flaky = FailOnce("raise", 3, str(tmp_path / "failed-once"))
    with parallax.monitor() as monitor:
        backend.map(flaky, range(8), retries=1, retry_on=InjectedError, chunksize=1)
        backend.map(fail_on({5}), range(8), errors="return", chunksize=1)
    retried, failed = monitor.runs
    records = retried.task_records
    kinds = {(record.index, record.attempt): kind for record, kind in
             zip(records, _kinds(records), strict=True)}
    assert kinds.pop((3, 1)) == "retried" and kinds.pop((3, 2)) == "recovered"
    assert set(kinds.values()) == {"ok"}
    records = failed.task_records
    assert [kind for kind in _kinds(records) if kind != "ok"] == ["failed"]


def test_timeline_rows_show_idle_workers_and_start_up(backend: Backend) -> None:
    with parallax.monitor() as monitor:
        backend.map(nap, [0.001] * 2, workers=6, chunksize=1)
    stats = monitor.runs[-1]
    rows = _rows("", stats, 0.0)
    working = [row for row in rows if row.bars]
    assert {row.label for row in working} == {worker.name for worker in stats.worker_records}
    for row in working:  # start-up is where the worker's first chunk started
        record = next(worker for worker in stats.worker_records if worker.name == row.label)
        assert row.startup == (None if row.label == PROBE_WORKER else record.first_started)
    idle = [row for row in rows if not row.bars]
    pool = [row for row in working if row.label != PROBE_WORKER]
    if backend.mode == "asyncio":  # workers is a concurrency limit on one loop
        assert idle == []
    else:
        assert len(idle) == stats.workers - len(pool)
        assert all(row.span == stats.wall_time and "ran nothing" in row.label for row in idle)
    if backend.mode in ("thread", "process", "free-threaded"):  # 6 workers, 2 items
        assert stats.workers == 6 and len(idle) >= 4


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The figures plot_timeline saves, before they are closed."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    figures: list[Any] = []
    save = Figure.savefig

    def keep(figure: Any, *args: Any, **kwargs: Any) -> None:
        figures.append(figure)
        save(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figures


def test_timeline_axis_starts_at_zero_with_a_legend(
    backend: Backend, tmp_path: Path, drawn: list[Any]
) -> None:
    flaky = FailOnce("raise", 3, str(tmp_path / "failed-once"))
    with parallax.monitor() as monitor:
        backend.map(flaky, range(8), retries=1, retry_on=InjectedError, chunksize=1)
        backend.map(fail_on({5}), range(8), errors="return", chunksize=1, workers=2)
    assert is_png(monitor.runs[0].plot_timeline(tmp_path / "one.png"))
    assert is_png(monitor.plot_timeline(tmp_path / "all.png"))
    one, both = drawn
    for figure, runs in ((one, monitor.runs[:1]), (both, monitor.runs)):
        axes = figure.axes[0]
        assert axes.get_xlim()[0] == 0
        labels = [text.get_text() for text in figure.legends[0].get_texts()]
        assert "ok" in labels and "failed, retried" in labels and "ok after a retry" in labels
        assert ("failed" in labels) == (len(runs) == 2)
        rows = [label.get_text() for label in axes.get_yticklabels()]
        assert len(rows) == sum(len(_rows("", run, 0.0)) for run in runs)
    assert all(row.startswith(("run 1: ", "run 2: "))
               for row in (label.get_text() for label in both.axes[0].get_yticklabels()))


def _slowest_one_by_one(slowest: list[Any], result: Any, keep: int = 5) -> None:
    """The recorder's rule, item by item: what ``StatsRecorder._note_slowest``
    must keep the same items of (it skips the items that cannot stay)."""
    import heapq

    previous = result.started
    for offset, end in enumerate(result.item_ends):
        begin = result.item_starts[offset] if result.item_starts is not None else previous
        seconds, previous = end - begin, end
        if len(slowest) < keep or seconds > slowest[0][0]:
            entry = (seconds, result.chunk.index_of(offset), 0, result.chunk.items[offset])
            if len(slowest) < keep:
                heapq.heappush(slowest, entry)
            else:
                heapq.heapreplace(slowest, entry)


def test_the_slowest_items_kept_are_those_of_the_item_by_item_rule() -> None:
    """Ties included (tiny items often end the same number of ns apart),
    whose winner depends on the order the items come in."""
    import random

    from parallax._recorder import StatsRecorder
    from parallax._units import Chunk, ChunkResult

    generator = random.Random(17)
    for _ in range(500):
        recorder = StatsRecorder("serial", "test", 1, "auto")
        expected: list[Any] = []
        start = 0
        for seq in range(generator.randint(1, 4)):
            count = generator.randint(1, 30)
            clock = generator.random()
            began = clock
            ends = []
            for _ in range(count):
                clock += generator.choice([0.25, 0.5, 1.0, 1.0, 2.0])
                ends.append(clock)
            starts = (None if generator.random() < 0.7
                      else [end - generator.choice([0.5, 1.0]) for end in ends])
            chunk = Chunk.fresh(seq, start, list(range(start, start + count)))
            start += count
            result = ChunkResult(chunk, list(range(count)), None, worker="w", started=began,
                                 finished=clock, cpu=0.0, item_ends=ends, item_starts=starts)
            _slowest_one_by_one(expected, result)
            recorder._note_slowest(result)
        kept = sorted((seconds, index, item) for seconds, index, _, item in recorder._slowest)
        assert kept == sorted((seconds, index, item) for seconds, index, _, item in expected)
