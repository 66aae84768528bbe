"""Stats for every run, in every mode: counts and timings that add up."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

import parallax
from conftest import Backend
from helpers import fail_on, nap


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
    tracks = [event for event in trace["traceEvents"] if event.get("name") == "thread_name"]
    assert len(slices) == 8 and len(tracks) == len({event["tid"] for event in slices})
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

    from parallax._stats import StatsRecorder
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

