"""The ``parallax`` command line: ``info``, ``demo`` and ``bench``.

The commands run as ``python -m parallax`` in a subprocess, as a user runs
them; the helpers behind them (``parse_modes``, ``read_inputs``,
``load_function``, ``mode_statuses``) are also tested in-process. Nothing
here depends on how fast the machine is: figures are checked for
consistency, never against a time.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import parallax
from parallax import _cli
from parallax._config import BUILTIN_MODES
from parallax._host import gil_enabled, usable_cpus
from parallax.backends import available_modes

USER_MODULE = textwrap.dedent(
    """
    import time

    def double(x):
        return 2 * x

    def length(text):
        return len(str(text))

    def nap(x):
        time.sleep(0.005)
        return x

    def fails_on_three(x):
        if x == 3:
            raise ValueError("three is right out")
        return x

    NOT_A_FUNCTION = 42
    """
)


def run_cli(*args: str, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m parallax ARGS`` in a subprocess, with PARALLAX_MODE unset."""
    environment = {key: value for key, value in os.environ.items() if key != "PARALLAX_MODE"}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "parallax", *args],
        capture_output=True, text=True, timeout=120, cwd=cwd, env=environment, check=False,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A directory holding a user module ``userwork.py`` and some input files."""
    (tmp_path / "userwork.py").write_text(USER_MODULE)
    (tmp_path / "words.txt").write_text("alpha\nbe\ngamma\n")
    (tmp_path / "values.jsonl").write_text('{"a": 1}\n[1, 2, 3]\n\n"text"\n')
    (tmp_path / "broken.jsonl").write_text('{"a": 1}\nnot json\n')
    return tmp_path


def table_rows(stdout: str) -> dict[str, list[str]]:
    """The bench table's rows by mode: mode -> its cells (split on 2+ spaces)."""
    lines = stdout.splitlines()
    start = next(number for number, line in enumerate(lines) if line.startswith("mode "))
    rows: dict[str, list[str]] = {}
    for line in lines[start + 1:]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = cells
    return rows


# -- info -----------------------------------------------------------------------------


def test_info_lists_every_mode_with_a_status() -> None:
    result = run_cli("info")
    assert result.returncode == 0, result.stderr
    rows = {}
    for line in result.stdout.splitlines():
        match = re.match(r"^  (\S+)\s+(yes|limited|no)\s+(.+)$", line)
        if match:
            rows[match[1]] = (match[2], match[3])
    for mode in (*BUILTIN_MODES, *available_modes()):
        assert mode in rows, f"{mode} missing from:\n{result.stdout}"
    for mode in ("auto", "serial", "thread"):
        assert rows[mode][0] == "yes"


def test_info_reports_the_interpreter_cpus_and_process_start() -> None:
    result = run_cli("info")
    out = result.stdout
    assert f"parallax       {parallax.__version__}" in out
    assert sys.version.split()[0] in out
    expected_gil = "GIL enabled" if gil_enabled() else "GIL disabled"
    assert expected_gil in out
    assert re.search(rf"^CPUs\s+{usable_cpus()} usable", out, re.MULTILINE)
    assert "subprocess" in out and "never fork" in out
    assert re.search(r"^PARALLAX_MODE\s+not set", out, re.MULTILINE)


def test_info_shows_a_forced_mode() -> None:
    result = run_cli("info", env={"PARALLAX_MODE": "serial"})
    assert re.search(r"^PARALLAX_MODE\s+'serial': every call runs in this mode", result.stdout,
                     re.MULTILINE)
    invalid = run_cli("info", env={"PARALLAX_MODE": "turbo"})
    assert invalid.returncode == 0
    assert "'turbo' is not a mode: every parallax call will raise ValueError" in invalid.stdout


def test_info_explains_dask_and_free_threaded() -> None:
    out = run_cli("info").stdout
    dask_row = next(line for line in out.splitlines() if line.startswith("  dask "))
    if importlib.util.find_spec("distributed") is None:
        assert " no " in dask_row
        assert "pip install 'parallax[dask]'" in dask_row
    free_row = next(line for line in out.splitlines() if line.startswith("  free-threaded "))
    if "free-threaded" in available_modes() and gil_enabled():
        assert "limited" in free_row
        assert "as plain threads: no CPU parallelism on this build" in free_row


def test_mode_statuses_covers_known_and_registered_modes() -> None:
    statuses = {status.mode: status for status in _cli.mode_statuses()}
    assert set(BUILTIN_MODES) | set(available_modes()) <= set(statuses)
    for status in statuses.values():
        assert status.status in ("yes", "limited", "no")
        assert status.note
    for mode in BUILTIN_MODES:
        if mode not in available_modes():
            assert statuses[mode].status == "no"


# -- demo -----------------------------------------------------------------------------


def _seconds(text: str) -> float:
    value, unit = text.split()
    return float(value) * (1e-3 if unit == "ms" else 1.0)


def test_demo_runs_both_workloads_and_reports_truthful_figures() -> None:
    result = run_cli("demo")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "1. CPU-bound" in out and "2. I/O-bound" in out
    chosen = re.findall(r"auto chose  (\S+), (\d+) workers", out)
    reasons = re.findall(r"because     (.+)", out)
    assert len(chosen) == len(reasons) == 2
    for mode, workers in chosen:
        assert mode in available_modes() and mode != "auto"
        assert int(workers) >= 1
    assert all(len(reason) > 10 for reason in reasons)
    # Sleeping is waiting, not computing, whatever the machine's speed.
    assert chosen[1][0] == "thread"
    assert "I/O-bound" in reasons[1]
    # The sleep's serial time is computed, not run: 200 x 20 ms.
    assert "serial      4.00 s (computed, not run" in out
    # Each speed-up is the serial time over the wall time printed next to it.
    walls = [_seconds(text) for text in re.findall(r"wall time   ([\d.]+ m?s)", out)]
    serials = [_seconds(text) for text in re.findall(r"serial      ([\d.]+ m?s)", out)]
    speedups = [float(text) for text in re.findall(r"speed-up    ([\d.]+)x", out)]
    assert len(walls) == len(serials) == len(speedups) == 2
    for wall, serial, speedup in zip(walls, serials, speedups, strict=True):
        assert speedup == pytest.approx(serial / wall, rel=0.05, abs=0.1)
    # mon.summary() closes the demo: a header and one line per run.
    summary = out[out.index("Every run recorded by parallax.monitor():"):].splitlines()
    assert summary[1].split()[:3] == ["#", "mode", "tasks"]
    assert [line.split()[:3] for line in summary[2:4]] == [
        ["1", chosen[0][0], "100"],
        ["2", chosen[1][0], "200"],
    ]


# -- bench ----------------------------------------------------------------------------


def test_bench_prints_a_row_per_mode_and_the_auto_choice(project: Path) -> None:
    result = run_cli("bench", "userwork:double", "--range", "40",
                     "--modes", "serial,thread,process,auto", "--repeat", "2", cwd=project)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "parallax bench userwork:double: 40 inputs (range(40))" in out
    assert "lower median of 2 runs" in out
    rows = table_rows(out)
    assert list(rows) == ["serial", "thread", "process", "auto"]
    for mode in ("serial", "thread", "process"):
        assert rows[mode][1] == mode  # "ran as"
    assert rows["auto"][1] in available_modes()
    assert rows["serial"][4] == "1.00x"
    for cells in rows.values():
        assert len(cells) == 6
        assert re.fullmatch(r"[\d.]+ (s|ms|µs)", cells[3])
        assert re.fullmatch(r"[\d.]+x", cells[4])
        assert re.fullmatch(r"\d+%", cells[5])
    match = re.search(r"auto-selector \(parallax.plan on these inputs\): (\S+), (\d+) workers?",
                      out)
    assert match and match[1] in available_modes()
    assert re.search(r"^  reason: .+", out, re.MULTILINE)


def test_bench_runs_each_mode_even_when_parallax_mode_is_set(project: Path) -> None:
    result = run_cli("bench", "userwork:double", "--range", "10", "--modes", "serial,thread",
                     "--repeat", "1", cwd=project, env={"PARALLAX_MODE": "serial"})
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    assert rows["thread"][1] == "thread"


def test_bench_reads_text_and_json_lines_inputs(project: Path) -> None:
    text = run_cli("bench", "userwork:length", "--input", "words.txt", "--modes", "serial",
                   "--repeat", "1", cwd=project)
    assert text.returncode == 0, text.stderr
    assert "3 inputs (3 lines of words.txt)" in text.stdout
    lines = run_cli("bench", "userwork.py:length", "--input", "values.jsonl",
                    "--modes", "serial,thread", "--repeat", "1", cwd=project)
    assert lines.returncode == 0, lines.stderr
    assert "3 inputs (3 JSON values of values.jsonl)" in lines.stdout
    assert list(table_rows(lines.stdout)) == ["serial", "thread"]


def test_bench_without_serial_says_why_there_is_no_speedup(project: Path) -> None:
    result = run_cli("bench", "userwork:nap", "--range", "8", "--modes", "thread",
                     "--repeat", "1", cwd=project)
    assert result.returncode == 0, result.stderr
    assert table_rows(result.stdout)["thread"][4] == "n/a"
    assert "add serial to --modes" in result.stdout


def test_bench_reports_a_failing_function_and_exits_1(project: Path) -> None:
    result = run_cli("bench", "userwork:fails_on_three", "--range", "6",
                     "--modes", "serial,thread", "--repeat", "1", cwd=project)
    assert result.returncode == 1
    rows = table_rows(result.stdout)
    assert rows["serial"][1] == rows["thread"][1] == "failed"
    assert "serial: ValueError: three is right out (parallax: raised by item 3" in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["userwork"], "expected MODULE:FUNC"),
        (["no_such_module_for_parallax:f"], "no module named 'no_such_module_for_parallax'"),
        (["userwork:missing"], "module 'userwork' has no attribute 'missing'"),
        (["userwork:NOT_A_FUNCTION"], "is not callable"),
        (["missing.py:f"], "no such file: missing.py"),
        (["userwork:double", "--input", "absent.txt"], "input file not found: absent.txt"),
        (["userwork:double", "--input", "broken.jsonl"], "broken.jsonl, line 2: not JSON"),
        (["userwork:double", "--modes", "serial,bogus"], "unknown mode 'bogus'"),
        (["userwork:double", "--range", "0"], "expected a positive integer"),
        (["userwork:double", "--range", "3", "--input", "words.txt"], "not allowed with"),
    ],
)
def test_bench_usage_errors_exit_2_without_traceback(
    project: Path, args: list[str], message: str
) -> None:
    result = run_cli("bench", *args, cwd=project)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_no_command_or_an_unknown_one_is_a_usage_error() -> None:
    bare = run_cli()
    assert bare.returncode == 2
    assert "info" in bare.stderr and "demo" in bare.stderr and "bench" in bare.stderr
    unknown = run_cli("frobnicate")
    assert unknown.returncode == 2
    assert "invalid choice: 'frobnicate'" in unknown.stderr


def test_console_script_runs() -> None:
    script = shutil.which("parallax", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the parallax console script is not installed next to this interpreter")
    result = subprocess.run([script, "info"], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert "modes" in result.stdout


# -- the helpers, in-process -------------------------------------------------------------


def test_main_returns_exit_codes_instead_of_exiting(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli.main(["--version"]) == 0
    assert parallax.__version__ in capsys.readouterr().out
    assert _cli.main(["bench"]) == 2
    assert "MODULE:FUNC" in capsys.readouterr().err


def test_parse_modes_checks_and_deduplicates() -> None:
    assert _cli.parse_modes(" thread, serial ,thread,") == ["thread", "serial"]
    with pytest.raises(_cli.UsageError, match="valid modes are: auto, serial"):
        _cli.parse_modes("serial,warp-speed")
    with pytest.raises(_cli.UsageError, match="at least one mode"):
        _cli.parse_modes(" , ")


def test_read_inputs(project: Path) -> None:
    assert _cli.read_inputs(None, None) == (list(range(100)), "range(100)")
    assert _cli.read_inputs(None, 3) == ([0, 1, 2], "range(3)")
    inputs, source = _cli.read_inputs(str(project / "values.jsonl"), None)
    assert inputs == [{"a": 1}, [1, 2, 3], "text"]
    assert source.startswith("3 JSON values")
    inputs, _ = _cli.read_inputs(str(project / "words.txt"), None)
    assert inputs == ["alpha", "be", "gamma"]
    (project / "empty.txt").write_text("")
    with pytest.raises(_cli.UsageError, match="holds no inputs"):
        _cli.read_inputs(str(project / "empty.txt"), None)


def test_load_function_by_module_and_by_path(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "modules", dict(sys.modules))
    monkeypatch.chdir(project)
    double = _cli.load_function("userwork:double")
    assert double(21) == 42
    assert _cli.load_function(f"{project / 'userwork.py'}:length")("abc") == 3
    assert _cli.load_function("os.path:join") is os.path.join
    (project / "broken_module.py").write_text("1 / 0\n")
    with pytest.raises(_cli.UsageError, match="importing 'broken_module' failed: ZeroDivision"):
        _cli.load_function("broken_module:anything")
