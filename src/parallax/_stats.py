"""What every run records, and how it is read back.

Recording is cheap: a run keeps one small record per *chunk* (who ran it,
when, CPU time, per-item end times when items were slow enough to time).
Per-task and per-worker views are derived from those only when asked for.
Items too fast to time one by one (under ~20 µs) get the chunk's average, and
their records say ``estimated=True``.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._errors import describe_item
from ._units import PROBE_WORKER, ChunkRecord

if TYPE_CHECKING:
    from pathlib import Path  # imported by the writers: a run's stats are built at its end

__all__ = ["PROBE_WORKER", "Stats", "TaskRecord", "WorkerRecord", "plot_runs", "trace_runs"]

@dataclass(frozen=True, slots=True)
class TaskRecord:
    """One item's run. Times are seconds since the run started."""

    index: int
    worker: str
    queued: float  # when its chunk was handed to the backend
    started: float
    finished: float
    cpu: float
    attempt: int
    outcome: str  # "ok" or "error"
    estimated: bool  # True: the chunk's average, the item was too fast to time alone

    @property
    def wall(self) -> float:
        return self.finished - self.started


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """One worker's share of a run."""

    name: str
    tasks: int
    chunks: int
    busy: float
    idle: float  # run wall time not spent on this worker's chunks
    startup: float  # from the run's start to this worker's first chunk
    first_started: float
    last_finished: float
    utilisation: float  # busy / run wall time


@dataclass
class Stats:
    """The record of one run (or, for ``Executor.stats``, of several)."""

    mode: str
    reason: str
    workers: int
    chunksize: int | str
    tasks: int = 0
    failed: int = 0
    retried: int = 0
    wall_time: float = 0.0
    started_at: float = 0.0  # time.time() when the run began
    _origin: float = 0.0  # perf_counter() when the run began
    _chunks: list[ChunkRecord] = field(default_factory=list, repr=False)
    _attempts: dict[int, int] = field(default_factory=dict, repr=False)
    #: heap of (seconds, index, tie-breaker, input) of the slowest timed items
    _slowest: list[tuple[float, int, int, Any]] = field(default_factory=list, repr=False)
    _busy: float = field(default=0.0, repr=False)
    #: False when per-task records were turned off (``record_tasks=False``)
    records_kept: bool = True
    #: True when the run outgrew the record cap and later chunks only count
    records_truncated: bool = False

    def slowest(self, count: int = 5) -> list[tuple[int, float, str]]:
        """The slowest timed items: (index, seconds, short repr of the input)."""
        ranked = sorted(self._slowest, key=lambda entry: entry[:2], reverse=True)[:count]
        return [(index, seconds, describe_item(item)) for seconds, index, _, item in ranked]

    # -- derived views -----------------------------------------------------------

    @property
    def task_records(self) -> list[TaskRecord]:
        records: list[TaskRecord] = []
        origin = self._origin
        for chunk in self._chunks:
            count = chunk.done
            if count == 0:
                continue
            ends = chunk.item_ends
            starts = chunk.item_starts
            share_cpu = chunk.cpu / count
            average = (chunk.finished - chunk.started) / count
            previous = chunk.started
            for offset in range(count):
                if ends is not None and offset < len(ends):
                    finished = ends[offset]
                    estimated = False
                else:
                    finished = previous + average
                    estimated = True
                position = chunk.positions[offset]
                if starts is not None:  # items ran concurrently
                    previous = starts[offset]
                records.append(
                    TaskRecord(
                        index=chunk.start + position,
                        worker=chunk.worker,
                        queued=min(chunk.submitted, previous) - origin,
                        started=previous - origin,
                        finished=finished - origin,
                        cpu=share_cpu,
                        attempt=1,
                        outcome="error" if offset in chunk.failed else "ok",
                        estimated=estimated,
                    )
                )
                previous = finished
        records.sort(key=lambda record: (record.index, record.started))
        return self._number_attempts(records)

    def _number_attempts(self, records: list[TaskRecord]) -> list[TaskRecord]:
        """Set ``attempt`` on retried items: the last record has the final attempt."""
        if not self._attempts:
            return records
        numbered: list[TaskRecord] = []
        for index, group in itertools.groupby(records, key=lambda record: record.index):
            runs = list(group)
            final = self._attempts.get(index, len(runs))
            first = max(1, final - len(runs) + 1)
            numbered.extend(
                dataclasses.replace(record, attempt=first + offset)
                for offset, record in enumerate(runs)
            )
        return numbered

    @property
    def worker_records(self) -> list[WorkerRecord]:
        by_worker: dict[str, list[ChunkRecord]] = {}
        for chunk in self._chunks:
            by_worker.setdefault(chunk.worker, []).append(chunk)
        wall = self.wall_time or 1e-12
        records = []
        for name, chunks in sorted(by_worker.items()):
            busy = _covered(chunks)
            first_started = min(chunk.started for chunk in chunks) - self._origin
            records.append(
                WorkerRecord(
                    name=name,
                    tasks=sum(chunk.done for chunk in chunks),
                    chunks=len(chunks),
                    busy=busy,
                    idle=max(0.0, self.wall_time - busy),
                    startup=max(0.0, first_started),
                    first_started=first_started,
                    last_finished=max(chunk.finished for chunk in chunks) - self._origin,
                    utilisation=min(1.0, busy / wall),
                )
            )
        return records

    @property
    def busy_time(self) -> float:
        """Seconds of work summed over every chunk (the serial cost of the run)."""
        return self._busy

    @property
    def throughput(self) -> float:
        """Items per second of wall time."""
        return self.tasks / self.wall_time if self.wall_time > 0 else 0.0

    @property
    def efficiency(self) -> float:
        """Summed task time / (wall time x workers): 1.0 means no idle worker."""
        if self.wall_time <= 0 or self.workers <= 0:
            return 0.0
        return min(1.0, self.busy_time / (self.wall_time * self.workers))

    @property
    def overhead(self) -> float:
        """Wall seconds not explained by work spread evenly over the workers."""
        return max(0.0, self.wall_time - self.busy_time / max(1, self.workers))

    # -- output ---------------------------------------------------------------------

    def summary(self) -> str:
        """A readable text table of the run and its workers."""
        lines = [
            f"mode        {self.mode}" + (f"  ({self.reason})" if self.reason else ""),
            f"workers     {self.workers}    chunksize {self.chunksize}",
            f"tasks       {self.tasks}    failed {self.failed}    retried {self.retried}",
            f"wall time   {self.wall_time:.4f} s    throughput {self.throughput:,.1f} items/s",
            f"efficiency  {self.efficiency:.0%}    overhead {self.overhead:.4f} s",
        ]
        workers = self.worker_records
        if workers:
            lines.append("")
            lines.append(
                f"{'worker':<30} {'tasks':>8} {'chunks':>7} {'busy s':>9} {'idle s':>9} "
                f"{'util':>5}"
            )
            for worker in workers:
                lines.append(
                    f"{worker.name:<30} {worker.tasks:>8} {worker.chunks:>7} "
                    f"{worker.busy:>9.4f} {worker.idle:>9.4f} {worker.utilisation:>5.0%}"
                )
        slowest = self.slowest(3)
        if slowest:
            lines.append("")
            lines.append("slowest     " + ", ".join(
                f"item {index} ({text}) {seconds:.4f} s" for index, seconds, text in slowest
            ))
        return "\n".join(lines)

    def to_dict(self, *, tasks: bool = True) -> dict[str, Any]:
        """A JSON-serialisable dict; ``tasks=False`` leaves out per-task records."""
        data: dict[str, Any] = {
            "mode": self.mode,
            "reason": self.reason,
            "workers": self.workers,
            "chunksize": self.chunksize,
            "tasks": self.tasks,
            "failed": self.failed,
            "retried": self.retried,
            "wall_time": self.wall_time,
            "started_at": self.started_at,
            "throughput": self.throughput,
            "efficiency": self.efficiency,
            "overhead": self.overhead,
            "worker_records": [_record_dict(record) for record in self.worker_records],
            "slowest": [
                {"index": index, "seconds": seconds, "input": text}
                for index, seconds, text in self.slowest()
            ],
        }
        if tasks:
            data["task_records"] = [_record_dict(record) for record in self.task_records]
        return data

    def to_chrome_trace(self, path: str | Path) -> Path:
        """Write Trace Event JSON (Perfetto, chrome://tracing): a track per worker."""
        return _write_trace(_trace_events(self, 1, f"parallax {self.mode}", self._origin), path)

    def plot_timeline(self, path: str | Path) -> Path:
        """Write a PNG Gantt chart of the run: a row per worker, idle ones
        too; failed and retried items in colours of their own; time from 0
        (needs matplotlib)."""
        title = (f"parallax {self.mode}: {self.tasks} tasks on {self.workers} workers, "
                 f"{self.wall_time:.3g} s")
        return _plot_timeline([("", self)], path, title)

    @classmethod
    def combine(cls, runs: Sequence[Stats], *, mode: str, workers: int) -> Stats:
        """One Stats over several runs (``Executor.stats``)."""
        if not runs:
            return cls(mode=mode, reason="", workers=workers, chunksize="auto")
        origin = min(run._origin for run in runs)
        end = max(run._origin + run.wall_time for run in runs)
        return cls(
            mode=mode,
            reason=runs[-1].reason,
            workers=workers,
            chunksize=runs[-1].chunksize,
            tasks=sum(run.tasks for run in runs),
            failed=sum(run.failed for run in runs),
            retried=sum(run.retried for run in runs),
            wall_time=end - origin,
            started_at=min(run.started_at for run in runs),
            _origin=origin,
            _chunks=[chunk for run in runs for chunk in run._chunks],
            _attempts={index: count for run in runs for index, count in run._attempts.items()},
            _slowest=[entry for run in runs for entry in run._slowest],
            _busy=sum(run._busy for run in runs),
            records_kept=all(run.records_kept for run in runs),
            records_truncated=any(run.records_truncated for run in runs),
        )


def _covered(chunks: list[ChunkRecord]) -> float:
    """Seconds during which at least one of ``chunks`` ran (they may overlap:
    an asyncio loop runs several at once)."""
    total = 0.0
    end = float("-inf")
    for chunk in sorted(chunks, key=lambda record: record.started):
        if chunk.finished <= end:
            continue
        total += chunk.finished - max(chunk.started, end)
        end = chunk.finished
    return total


def _record_dict(record: TaskRecord | WorkerRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__slots__}


def trace_runs(runs: list[Stats], path: str | Path) -> Path:
    """Write ``runs`` as Trace Event JSON: one process per run, a track per
    worker, all on one clock (seconds since the first run started)."""
    origin = min((run._origin for run in runs), default=0.0)
    events = [
        event
        for number, run in enumerate(runs, start=1)
        for event in _trace_events(run, number, f"run {number}: parallax {run.mode}", origin)
    ]
    return _write_trace(events, path)


def plot_runs(runs: list[Stats], path: str | Path) -> Path:
    """Write a PNG of ``runs`` on one time axis: a group of rows (its workers) per run."""
    tasks = sum(run.tasks for run in runs)
    title = f"parallax: {len(runs)} run{'s' * (len(runs) != 1)}, {tasks} tasks"
    return _plot_timeline([(f"run {number}: ", run) for number, run in
                           enumerate(runs, start=1)], path, title)

# -- exports: trace events, the timeline picture -------------------------------------

#: how each task record is drawn and named in the legend, by its kind
_KINDS: dict[str, tuple[str, str]] = {
    "ok": ("tab:blue", "ok"),
    "recovered": ("tab:green", "ok after a retry"),
    "retried": ("tab:orange", "failed, retried"),
    "failed": ("tab:red", "failed"),
}
#: most idle workers drawn as a row each; more are one row
_IDLE_ROWS = 16


def _kinds(records: list[TaskRecord]) -> list[str]:
    """Each record's kind: ``ok``, ``recovered`` (ok at a later attempt),
    ``retried`` (failed, and run again) or ``failed`` (its final outcome)."""
    kinds = []
    for position, record in enumerate(records):
        final = position + 1 == len(records) or records[position + 1].index != record.index
        if record.outcome == "ok":
            kinds.append("recovered" if record.attempt > 1 else "ok")
        else:
            kinds.append("failed" if final else "retried")
    return kinds


def _trace_events(stats: Stats, pid: int, name: str, origin: float) -> list[dict[str, Any]]:
    """The run's Trace Event records as process ``pid``, timed from ``origin``."""
    shift = (stats._origin - origin) * 1e6
    workers = sorted({chunk.worker for chunk in stats._chunks})
    tids = {worker: number for number, worker in enumerate(workers, start=1)}
    events: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": pid, "args": {"name": name}},
        {"name": "process_sort_index", "ph": "M", "pid": pid, "args": {"sort_index": pid}},
        {"name": "thread_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": "run"}},
        {"name": f"{stats.mode}: {stats.tasks} tasks", "cat": "run", "ph": "X", "pid": pid,
         "tid": 0, "ts": shift, "dur": stats.wall_time * 1e6,
         "args": {"reason": stats.reason, "workers": stats.workers, "failed": stats.failed,
                  "retried": stats.retried}},
    ]
    for worker, tid in tids.items():
        events.append(
            {"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": worker}}
        )
    records = stats.task_records
    for record, kind in zip(records, _kinds(records), strict=True):
        events.append(
            {
                "name": f"item {record.index}",
                "cat": record.outcome,
                "ph": "X",
                "pid": pid,
                "tid": tids[record.worker],
                "ts": shift + record.started * 1e6,
                "dur": max(record.wall, 0.0) * 1e6,
                "args": {"index": record.index, "estimated": record.estimated,
                         "attempt": record.attempt, "outcome": _KINDS[kind][1]},
            }
        )
    return events


def _write_trace(events: list[dict[str, Any]], path: str | Path) -> Path:
    import json
    from pathlib import Path

    target = Path(path)
    target.write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}))
    return target


@dataclass(slots=True)
class _Row:
    """One row of the timeline: a worker of a run, or idle workers."""

    label: str
    shift: float  # the run's start on the picture's clock
    startup: float | None = None  # seconds from the run's start to the worker's first chunk
    span: float | None = None  # a row without items: the run's wall time...
    span_kind: str = "idle"  # ...drawn as "idle" workers, or "unrecorded" (no records kept)
    bars: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


def _rows(prefix: str, stats: Stats, shift: float) -> list[_Row]:
    """The rows of one run: the probe, each worker, then the workers that ran nothing."""
    records = stats.task_records
    by_worker: dict[str, _Row] = {}
    for worker in stats.worker_records:
        known = worker.name != PROBE_WORKER
        by_worker[worker.name] = _Row(f"{prefix}{worker.name}", shift,
                                      startup=worker.first_started if known else None)
    for record, kind in zip(records, _kinds(records), strict=True):
        bars = by_worker[record.worker].bars.setdefault(kind, [])
        bars.append((shift + record.started, record.wall))
    rows = sorted(by_worker.values(), key=lambda row: (row.startup is not None, row.label))
    # A row per worker that ran nothing, from the run's worker count; not
    # where one worker runs many items at once (asyncio: workers is the
    # concurrency), nor when no records were kept.
    concurrent = any(chunk.item_starts is not None for chunk in stats._chunks)
    seen = sum(row.startup is not None for row in rows)
    idle = stats.workers - seen if stats.records_kept and not concurrent else 0
    if 0 < idle <= _IDLE_ROWS:
        rows += [_Row(f"{prefix}worker {seen + number} (ran nothing)", shift,
                      span=stats.wall_time) for number in range(1, idle + 1)]
    elif idle > _IDLE_ROWS:
        rows.append(_Row(f"{prefix}{idle} more workers (ran nothing)", shift,
                         span=stats.wall_time))
    if not rows:
        rows.append(_Row(f"{prefix}{stats.mode}, {stats.tasks} tasks", shift,
                         span=stats.wall_time, span_kind="unrecorded"))
    return rows


def _plot_timeline(runs: list[tuple[str, Stats]], path: str | Path, title: str) -> Path:
    """Draw ``runs`` (label prefix, stats) on one time axis from 0, a row
    group per run, and write the PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError as exc:
        raise ImportError(
            "plot_timeline needs matplotlib: pip install 'parallax[plot]' "
            "(or pip install matplotlib)"
        ) from exc
    origin = min((stats._origin for _, stats in runs), default=0.0)
    groups = [_rows(prefix, stats, stats._origin - origin) for prefix, stats in runs]
    rows = [row for group in groups for row in group]
    end = max((stats._origin - origin + stats.wall_time for _, stats in runs), default=0.0)
    figure, axes = plt.subplots(figsize=(11, 1.4 + 0.32 * max(1, len(rows))),
                                layout="constrained")
    used: set[str] = set()
    for number, row in enumerate(rows):
        if row.startup is not None and row.startup > 0:
            axes.broken_barh([(row.shift, row.startup)], (number - 0.15, 0.3),
                             facecolor="whitesmoke", edgecolor="grey", hatch="////",
                             linewidth=0.3)
            axes.plot([row.shift + row.startup], [number], marker="|", color="black",
                      markersize=11)
            used.add("startup")
        if row.span is not None and row.span_kind == "idle":
            axes.broken_barh([(row.shift, row.span)], (number - 0.05, 0.1),
                             facecolor="lightgrey")
            used.add("idle")
        elif row.span is not None:
            axes.broken_barh([(row.shift, row.span)], (number - 0.3, 0.6), facecolor="none",
                             edgecolor="grey", hatch="..", linewidth=0.6)
            used.add("unrecorded")
        for kind, bars in row.bars.items():
            # At least a sliver (1/2000 of the axis), so no item is invisible.
            shown = [(start, max(width, end / 2000)) for start, width in bars]
            axes.broken_barh(shown, (number - 0.4, 0.8), facecolor=_KINDS[kind][0],
                             edgecolor="white", linewidth=0.3)
            used.add(kind)
    first = 0
    for group in groups[:-1]:  # a line between two runs' rows
        first += len(group)
        axes.axhline(first - 0.5, color="black", linewidth=0.6, linestyle="--")
    axes.set_yticks(range(len(rows)), [row.label for row in rows], fontsize=8)
    axes.set_ylim(max(1, len(rows)) - 0.5, -0.5)  # the first row on top
    if not rows:
        axes.text(0.5, 0.5, "no runs", transform=axes.transAxes, ha="center", va="center")
    axes.set_xlim(0, max(end, 1e-6) * 1.01)
    axes.set_xlabel("seconds since the " + ("run" if len(runs) == 1 else "first run") +
                    " started")
    axes.set_title(title)
    axes.grid(axis="x", color="lightgrey", linewidth=0.5)
    axes.set_axisbelow(True)
    handles = [Patch(facecolor=color, label=label)
               for kind, (color, label) in _KINDS.items() if kind in used]
    if "startup" in used:
        handles.append(Patch(facecolor="whitesmoke", edgecolor="grey", hatch="////",
                             label="start-up: run start to first chunk"))
    if "idle" in used:
        handles.append(Patch(facecolor="lightgrey", label="idle worker"))
    if "unrecorded" in used:
        handles.append(Patch(facecolor="none", edgecolor="grey", hatch="..",
                             label="run without per-task records"))
    if handles:
        figure.legend(handles=handles, loc="outside right upper", fontsize=8)
    from pathlib import Path

    target = Path(path)
    figure.savefig(target, format="png", dpi=100)
    plt.close(figure)
    return target
