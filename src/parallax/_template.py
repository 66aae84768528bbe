"""The fork template: a small process that forks process workers on request.

A fresh worker pays an interpreter start and the import of the worker modules,
on every cold pool and every respawn. The template pays them once: started
as a fresh interpreter by the first pool that needs it (:func:`start_ahead`:
before the process backend is even imported, so the two overlap), it imports
the worker modules and waits on a control socket; each request makes it fork,
and the child runs the same worker body as a fresh worker
(``_procworker.run``). Forking is safe here where forking the caller is not:
the template never runs a thread, so no lock can be held at the fork. Its
workers share its read-only pages, cloudpickle included once a pool whose
functions travel by value asks for it (:func:`_warm_up`).

Both sides live here:

- the template's main program (:func:`serve`), which imports only the worker
  tier plus ``select``, ``socket`` (descriptors arrive with ``SCM_RIGHTS``) and
  ``ctypes`` (``PR_SET_PDEATHSIG`` for its children), all paid once;
- the caller's client (:func:`spawn_worker`, :class:`TemplateWorker`), which
  imports ``subprocess``, ``socket`` and ``queue`` only when first used.

The messages over the control socket are ``marshal``-ed tuples in
``_wire`` frames:

- caller -> template: ``(slot, environment, cwd, warm)`` with four
  descriptors (the worker's socket end, the marks file, standard output and
  error); ``warm``: import cloudpickle before this fork (:func:`_warm_up`);
- template -> caller: ``("spawned", pid)`` with a pidfd of the child (opened by
  the template before it can reap the child: no PID-reuse race), or
  ``("failed", reason)``; later ``("exit", pid, exitcode)`` for each child it
  reaped (``exitcode`` as ``Popen.returncode``: negative for a signal).

No orphans: the template reads EOF when the caller dies (even by SIGKILL), and
then SIGKILLs its children and exits; it also checks its parent every second
(a process the caller forked may hold the socket). Its children die with it
(``PR_SET_PDEATHSIG``). When the template dies, its workers' sockets close,
their pools replace them, and the next spawn starts a new template.

Linux only (``os.fork`` next to ``os.pidfd_open`` and
``signal.pidfd_send_signal``); elsewhere process mode starts fresh
interpreters (:data:`SUPPORTED`).
"""

from __future__ import annotations

import contextlib
import marshal
import os
import signal
import sys
import threading  # (the worker tier has it anyway)

from ._wire import Channel

TYPE_CHECKING = False  # not typing's: the template does not import typing
if TYPE_CHECKING:
    import queue
    import subprocess
    from collections.abc import Callable, Iterator

#: forking a template, and signalling its children race-free, works here
SUPPORTED = (
    sys.platform.startswith("linux")
    and hasattr(os, "fork")
    and hasattr(os, "pidfd_open")
    and hasattr(signal, "pidfd_send_signal")
)

#: the start method of a process pool that names none (``PARALLAX_START_METHOD``
#: unset): the template where it works (``backends._process.default_start_method``)
DEFAULT_START_METHOD = "template" if SUPPORTED else "fresh"

#: where the parallax package is imported from
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: how the caller starts a template (a third argument: the ``preload=``
#: modules and the caller's ``sys.path``, marshal-ed, in hex)
_TEMPLATE_COMMAND = (
    "import sys; from parallax._template import serve; serve(int(sys.argv[1]), *sys.argv[2:])"
)

#: seconds a spawn request waits for the template's answer (its own start
#: included) before the template counts as hung and is replaced
SPAWN_TIMEOUT = 60.0

#: seconds between the template's checks that its caller still lives
_PARENT_CHECK = 1.0


class TemplateGone(OSError):
    """The template died (or could not start) before it answered."""


class TemplateRefused(OSError):
    """The template will fork no worker (why: its message)."""


# -- the template's side ---------------------------------------------------------


def _prepare() -> Callable[[int, int], object]:
    """Import what every worker needs, once, before any fork; return prctl."""
    import ctypes
    import select  # noqa: F401  (the loop's; imported here to be shared)
    import socket  # noqa: F401  (descriptors arrive with SCM_RIGHTS)

    from . import _procworker  # noqa: F401  (the worker tier, shared by every child)

    prctl: Callable[[int, int], object] = ctypes.CDLL(None, use_errno=True).prctl
    return prctl


@contextlib.contextmanager
def _frozen_imports() -> Iterator[None]:
    """Import with the collector off (no collections meanwhile: about 1 ms of
    the boot's imports), then one, and freeze what the template holds: its
    objects go to the permanent generation, so a worker's first collections
    do not write to (and so copy) the pages it shares with the template.
    The collector is back on after (the children inherit the setting)."""
    import gc

    gc.disable()
    try:
        yield
        gc.collect()
        gc.freeze()
    finally:
        gc.enable()


def _warm_up() -> None:
    """Import cloudpickle (with ``typing``, ``dataclasses``, ``inspect``,
    ``logging``: about 11 ms) before the next fork, so that every worker of
    a pool whose functions come by value (one defined in ``__main__``, a
    lambda, a closure) shares it instead of importing its own copy; frozen
    as the boot's imports are (:func:`_frozen_imports`).

    Asked for by the first spawn request of such a pool (``warm``), not at
    boot: a pool whose functions all travel by reference never needs
    cloudpickle in its workers, and a template that imported it anyway would
    cost that pool 4 MB and its first start 12 ms. Measured on a script's
    first pool of 2 workers (docs/backends/process.md): forking first and
    letting each worker import it cost a function sent by value 8 ms and
    7.5 MB, so a pool that needs it has its template import it first.
    """
    if "cloudpickle" in sys.modules:
        return
    with _frozen_imports(), contextlib.suppress(ImportError):  # cloudpickle is optional
        import cloudpickle  # noqa: F401


def _preload(modules: tuple[str, ...], path: list[str]) -> str | None:
    """Import a pool's ``preload=`` modules with the caller's ``sys.path``,
    before the first fork, so that its workers share them; return why this
    template must fork nothing (a module left a thread running), or None.

    A module that fails here is left out: each worker imports it again and
    its error reaches the caller from there, as from a fresh interpreter.
    """
    sys.path[:] = path
    for module in modules:
        try:
            __import__(module)
        except BaseException:
            continue
    # Every thread that runs Python code, ``_thread``'s too. (A library's
    # native thread pool, OpenBLAS's say, is not one: such libraries stop or
    # re-create their threads at a fork themselves.)
    running = len(sys._current_frames())
    if running == 1:
        return None
    # A fork copies one thread: a lock another thread held at that moment
    # would stay held in every worker.
    names = sorted(thread.name for thread in threading.enumerate()
                   if thread is not threading.main_thread())
    return (f"importing preload={modules!r} left {running - 1} thread(s) running in the "
            f"fork template ({', '.join(names) or 'unnamed'}), which then cannot fork "
            "safely; with start_method='fresh' each worker imports them itself")


def _fresh_random_state() -> None:
    """In a forked worker: draw other random numbers than its siblings, as a
    fresh interpreter would. ``random`` reseeds itself at a fork; the global
    generator of a NumPy that a template preloaded does not."""
    numpy_random = sys.modules.get("numpy.random")
    seed = getattr(numpy_random, "seed", None)
    if seed is not None:
        seed()


def serve(control_fd: int, preload: str | None = None) -> None:
    """The template's main program: fork a worker per request until the caller
    goes. ``preload``: the hex of the marshal-ed ``(modules, sys.path)`` to
    import before the first fork (:func:`_preload`)."""
    import select

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller handles Ctrl-C
    with _frozen_imports():
        prctl = _prepare()
        refusal = None if preload is None else _preload(*marshal.loads(bytes.fromhex(preload)))
    control = Channel(control_fd)
    caller = os.getppid()
    me = os.getpid()
    # SIGCHLD wakes the loop through this pipe (the handler itself does nothing).
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
    children: set[int] = set()
    try:
        while os.getppid() == caller:
            ready, _, _ = select.select([control_fd, wake_r], [], [], _PARENT_CHECK)
            if wake_r in ready:
                while True:
                    try:
                        if not os.read(wake_r, 4096):
                            break
                    except BlockingIOError:
                        break
            _reap(control, children)
            if control_fd not in ready:
                continue
            try:
                frame, fds = control.recv_frame()
            except (EOFError, OSError):
                break  # the caller is gone
            if refusal is not None:
                for fd in fds:
                    os.close(fd)
                control.send_bytes(marshal.dumps(("refused", refusal)))
                continue
            pid = _fork(control, frame, fds, prctl, me, (control_fd, wake_r, wake_w))
            if pid is not None:
                children.add(pid)
    except OSError:
        pass  # the caller stopped listening: it is gone
    finally:
        for pid in children:
            with contextlib.suppress(OSError):  # not reaped yet: the pid is still theirs
                os.kill(pid, signal.SIGKILL)
        os._exit(0)


def _reap(control: Channel, children: set[int]) -> None:
    """Collect every child that exited and tell the caller how it ended."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        control.send_bytes(marshal.dumps(("exit", pid, os.waitstatus_to_exitcode(status))))


def _fork(control: Channel, frame: bytearray, fds: list[int],
          prctl: Callable[[int, int], object], template: int,
          own_fds: tuple[int, ...]) -> int | None:
    """Fork one worker for a request; answer it; return the child's pid."""
    try:
        slot, environment, cwd, warm = marshal.loads(frame)
        conn_fd, mark_fd, out_fd, err_fd = fds
    except (ValueError, TypeError, EOFError) as exc:
        for fd in fds:
            os.close(fd)
        control.send_bytes(marshal.dumps(("failed", f"a malformed request: {exc!r}")))
        return None
    if warm:
        _warm_up()
    try:
        pid = os.fork()
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        control.send_bytes(marshal.dumps(("failed", f"fork failed: {exc!r}")))
        return None
    if pid == 0:
        _child(conn_fd, mark_fd, out_fd, err_fd, slot, environment, cwd, prctl, template,
               own_fds)
    for fd in fds:
        os.close(fd)
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as exc:
        os.kill(pid, signal.SIGKILL)  # reaped and reported as usual
        control.send_bytes(marshal.dumps(("failed", f"pidfd_open failed: {exc!r}")))
        return pid
    try:
        control.send_bytes(marshal.dumps(("spawned", pid)), (pidfd,))
    finally:
        os.close(pidfd)
    return pid


def _child(conn_fd: int, mark_fd: int, out_fd: int, err_fd: int, slot: int,
           environment: dict[str, str], cwd: str | None,
           prctl: Callable[[int, int], object], template: int,
           own_fds: tuple[int, ...]) -> None:
    """In the forked worker: become what a fresh worker would be, run, and
    leave with ``os._exit`` (never through the template's own code)."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in own_fds:
            os.close(fd)
        pr_set_pdeathsig = 1
        prctl(pr_set_pdeathsig, signal.SIGKILL)  # die with the template
        if os.getppid() != template:  # it died before the line above
            os._exit(1)
        # The caller's standard streams as they are now, stdin /dev/null: as a
        # fresh worker started now would have them.
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        os.close(out_fd)
        os.close(err_fd)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.environ.clear()
        os.environ.update(environment)
        if cwd is not None:
            os.chdir(cwd)
        # The command line a fresh worker has (code may look at it).
        sys.argv[:] = ["-c", str(conn_fd), str(mark_fd), str(slot)]
        _fresh_random_state()
        code = _run_worker(conn_fd, mark_fd, slot)
    except BaseException:
        sys.excepthook(*sys.exc_info())
    finally:
        _flush()
        os._exit(code)


def _run_worker(conn_fd: int, mark_fd: int, slot: int) -> int:
    """Run the worker body; end as an interpreter would: its exit code, the
    non-daemon threads joined, the ``atexit`` functions run."""
    import atexit

    from ._procworker import run

    try:
        run(conn_fd, mark_fd, slot)
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    main = threading.main_thread()
    for thread in threading.enumerate():
        if thread is not main and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    return code


def _exit_code(value: object) -> int:
    """``sys.exit(value)``'s status, as the interpreter makes it."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    print(value, file=sys.stderr)
    return 1


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed stream: nothing to save
            if stream is not None:
                stream.flush()


# -- the caller's side -------------------------------------------------------------


class TemplateWorker:
    """A worker forked by the template: not the caller's child, so not a
    ``subprocess.Popen``, but used as one (pid, send_signal, poll, wait,
    returncode). Its exit status comes from the template; signals go through
    a pidfd.

    ``returncode`` stays None when the template died before reporting it
    (the worker then died with it, by ``PR_SET_PDEATHSIG``).
    """

    __slots__ = ("_done", "_lock", "_pidfd", "pid", "returncode")

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self._pidfd = pidfd
        self.returncode: int | None = None
        self._done = threading.Event()
        self._lock = threading.Lock()

    def open_pidfd(self) -> int:
        """A duplicate of its pidfd (readable once it exits), for the caller to close."""
        with self._lock:
            if self._pidfd < 0:  # gone already: a descriptor that reads as exited
                return _exited_fd()
            return os.dup(self._pidfd)

    def send_signal(self, signum: int) -> None:
        with self._lock:
            if self._pidfd >= 0:
                signal.pidfd_send_signal(self._pidfd, signum)

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        if not self._done.wait(timeout):
            import subprocess

            raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0.0)
        return self.returncode

    def _ended(self, exitcode: int | None) -> None:
        with self._lock:
            self.returncode = exitcode
            pidfd, self._pidfd = self._pidfd, -1
            if pidfd >= 0:
                os.close(pidfd)
        self._done.set()


def _is_open(fd: int) -> bool:
    """Is ``fd`` open here (a caller may have closed its standard output)?"""
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _exited_fd() -> int:
    """A descriptor that is readable at once (a pipe whose writer is closed)."""
    read_end, write_end = os.pipe()
    os.close(write_end)
    return read_end


class _Template:
    """The caller's end of one running template (``preload``: the modules it
    imports before its first fork, none for the shared one)."""

    def __init__(self, environment: dict[str, str], preload: tuple[str, ...] = ()) -> None:
        import queue
        import socket
        import subprocess

        command = [sys.executable, "-c", _TEMPLATE_COMMAND]
        ours, theirs = socket.socketpair()
        command.append(str(theirs.fileno()))
        if preload:
            path = [entry for entry in sys.path if isinstance(entry, str)]  # (marshal-able)
            command.append(marshal.dumps((preload, path)).hex())
        try:
            self.process: subprocess.Popen[bytes] = subprocess.Popen(
                command,
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=environment,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.owner = os.getpid()
        self._control = Channel(ours.detach())
        self.alive = True
        self._replies: queue.SimpleQueue[tuple[object, ...]] = queue.SimpleQueue()
        self._spawning = threading.Lock()
        self._state = threading.Lock()
        self._workers: dict[int, TemplateWorker] = {}
        self._reader: threading.Thread = threading.Thread(
            target=self._read, name="parallax-template", daemon=True
        )
        self._reader.start()
        #: a spawn asked it to import cloudpickle (it has, before that fork)
        self.warm = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def spawn(self, conn_fd: int, mark_fd: int, slot: int, environment: dict[str, str],
              cwd: str | None, warm: bool) -> TemplateWorker:
        import queue

        with self._spawning:
            if not self.alive:
                raise TemplateGone("the fork template has exited")
            request = marshal.dumps((slot, environment, cwd, warm))
            streams = [fd if _is_open(fd) else os.open(os.devnull, os.O_WRONLY) for fd in (1, 2)]
            try:
                self._control.send_bytes(request, (conn_fd, mark_fd, *streams))
            except OSError as exc:
                raise TemplateGone(f"the fork template stopped listening ({exc!r})") from exc
            finally:
                for ours, fd in zip((1, 2), streams, strict=True):
                    if fd != ours:
                        os.close(fd)
            try:
                reply = self._replies.get(timeout=SPAWN_TIMEOUT)
            except queue.Empty:
                self.kill()
                raise TemplateGone(
                    f"the fork template did not answer within {SPAWN_TIMEOUT:g} s; killed"
                ) from None
        if reply[0] == "spawned":
            worker = reply[1]
            assert isinstance(worker, TemplateWorker)
            self.warm = self.warm or warm
            return worker
        if reply[0] == "gone":
            code = reply[1] if len(reply) > 1 else None
            how = ("exited" if not isinstance(code, int) else f"exited with code {code}"
                   if code >= 0 else f"was killed by signal {-code}")
            raise TemplateGone(f"the fork template {how} before it answered")
        if reply[0] == "refused":
            raise TemplateRefused(str(reply[1]))
        raise OSError(f"the fork template could not start a worker: {reply[1]}")

    def kill(self) -> None:
        """Stop the template (its workers die with it); the reader reaps it."""
        with contextlib.suppress(OSError):
            self.process.kill()

    def forget(self) -> None:
        """In a forked child of the caller: drop this copy, touching nothing."""
        self.alive = False
        with contextlib.suppress(OSError):
            self._control.close()
        for worker in list(self._workers.values()):  # (their locks may be held: no locking)
            pidfd, worker._pidfd = worker._pidfd, -1
            if pidfd >= 0:
                with contextlib.suppress(OSError):
                    os.close(pidfd)

    def _read(self) -> None:
        """The reader thread: replies to spawns, and exit statuses."""
        try:
            while True:
                frame, fds = self._control.recv_frame()
                message = marshal.loads(frame)
                kind = message[0]
                if kind == "exit":
                    with self._state:
                        worker = self._workers.pop(message[1], None)
                    for fd in fds:
                        os.close(fd)
                    if worker is not None:
                        worker._ended(message[2])
                elif kind == "spawned":
                    worker = TemplateWorker(message[1], fds.pop())
                    for fd in fds:
                        os.close(fd)
                    with self._state:
                        self._workers[worker.pid] = worker
                    self._replies.put(("spawned", worker))
                else:
                    for fd in fds:
                        os.close(fd)
                    self._replies.put(message)
        except (EOFError, OSError, ValueError):
            pass  # the template is gone (or said nonsense: it is killed below)
        finally:
            self.alive = False
            with contextlib.suppress(Exception):
                # It closed its end, so it is on its way out: how it ends
                # tells the spawn waiting for it why (a preload that exits).
                self.process.wait(timeout=0.5)
            self.kill()
            with self._state:
                workers, self._workers = list(self._workers.values()), {}
            for worker in workers:
                worker._ended(None)  # died with the template; how, nobody saw
            with contextlib.suppress(Exception):  # killed above; init reaps it if not
                self.process.wait(timeout=10)
            self._replies.put(("gone", self.process.returncode))
            self._control.close()


#: the running templates of this process, by :func:`_key`: the shared one
#: (key ``()``), and one per set of ``preload=`` modules
_templates: dict[tuple[object, ...], _Template] = {}
#: held while a template is looked up or started
_starting = threading.Lock()


def _key(environment: dict[str, str], preload: tuple[str, ...]) -> tuple[object, ...]:
    """Which template serves a pool. Modules imported before the fork saw
    the environment (a numeric library sizes its thread pool from it) and
    the ``sys.path`` of that moment: a pool with other ones gets its own."""
    if not preload:
        return ()
    return (preload, tuple(sorted(environment.items())), tuple(sys.path))


def _running(template: _Template | None) -> bool:
    return template is not None and template.alive and template.owner == os.getpid()


def running_pid() -> int | None:
    """The pid of this process's shared template (the one of pools without
    ``preload=``), or None (none started, or gone)."""
    template = _templates.get(())
    return template.pid if template is not None and _running(template) else None


def running_pids() -> set[int]:
    """The pids of every template of this process, ``preload=`` ones included."""
    return {template.pid for template in list(_templates.values()) if _running(template)}


def start(environment: dict[str, str], preload: tuple[str, ...] = ()) -> bool:
    """Have the template of a pool with ``environment`` and ``preload``
    running (started now if it is not): it boots while the pool gets ready.
    Whether it has imported cloudpickle already (``warm``: an earlier pool's
    functions came by value)."""
    return _template(environment, preload).warm


def start_ahead(start_method: object) -> None:
    """Have the template booting now if a process pool about to be made will
    use it (``start_method`` is its option; None: the environment's or the
    default): called before the process backend is imported, so the
    template's start (and its warm-up) overlaps with that import and the
    pool's setup."""
    if not SUPPORTED:
        return
    chosen = (start_method if start_method is not None
              else os.environ.get("PARALLAX_START_METHOD") or DEFAULT_START_METHOD)
    if chosen != "template":
        return  # (a wrong value: the pool says so)
    _template(interpreter_environment())


def interpreter_environment() -> dict[str, str]:
    """This process's environment for a fresh interpreter that must import
    this very parallax (the template, a fresh worker): its root first in
    ``PYTHONPATH``."""
    environment = dict(os.environ)
    path = environment.get("PYTHONPATH")
    environment["PYTHONPATH"] = _PACKAGE_ROOT + (os.pathsep + path if path else "")
    return environment


def _template(environment: dict[str, str], preload: tuple[str, ...] = ()) -> _Template:
    key = _key(environment, preload)
    with _starting:
        template = _templates.get(key)
        if template is None or not _running(template):
            template = _templates[key] = _Template(environment, preload)
        return template


def spawn_worker(conn_fd: int, mark_fd: int, slot: int, environment: dict[str, str],
                 preload: tuple[str, ...] = (), *, warm: bool = False) -> TemplateWorker:
    """Fork a worker from the template of a pool with ``environment`` and
    ``preload`` (started now if it is not running); ``conn_fd`` and
    ``mark_fd`` are duplicated into it, the caller's copies stay open.
    ``warm``: the worker will load something sent by value, so the template
    imports cloudpickle first (once; every later worker shares it).

    A template that died since the last spawn is replaced, once.

    Raises:
        TemplateRefused: the template forks nothing (its ``preload=``
            imports left a thread running).
    """
    try:
        cwd: str | None = os.getcwd()
    except OSError:  # deleted: the worker keeps the template's
        cwd = None
    for attempt in range(2):
        template = _template(environment, preload)
        try:
            return template.spawn(conn_fd, mark_fd, slot, environment, cwd, warm)
        except TemplateGone:
            if attempt:
                raise
    raise AssertionError("unreachable")


def _forget_after_fork() -> None:
    """In a forked child of the caller: the parent's templates are not ours."""
    global _starting
    _starting = threading.Lock()  # another thread may have held it at the fork
    templates = list(_templates.values())
    _templates.clear()
    for template in templates:
        template.forget()


if SUPPORTED:
    os.register_at_fork(after_in_child=_forget_after_fork)

