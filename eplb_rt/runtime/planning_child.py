"""The child process that plans with ``EplbConfig.plan_in_subprocess``: one call at a time.

A daemon process, spawned (no forked threads), fed through a pipe. Being a daemon is the point:
``multiprocessing`` terminates daemon children when the serving process exits, before it joins
the others, and in a process that is itself a ``multiprocessing`` child (an engine's worker) that
exit path is the only one that runs. A ``ProcessPoolExecutor`` worker is not a daemon: a rank
that ended without ``shutdown()`` waited for an idle worker for ever, and the interpreter's exit
for a plan in flight.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from typing import Any


class PlanningChildDied(RuntimeError):
    """The child ended (killed for memory, a crash, ``kill()``) before it answered a call."""


class PlanningChild:
    """A spawned daemon process that runs ``fn(*args, **kwargs)`` for :meth:`call`."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, theirs = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(theirs, os.getpid()), name="eplb_rt-planner", daemon=True
        )
        self._process.start()
        theirs.close()  # its end: the pipe reads EOF once the child is gone
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` run in the child: its result, or its exception raised here.

        Raises:
            PlanningChildDied: the child ended before answering (it is not restarted).
        """
        with self._lock:
            try:
                self._conn.send((fn, args, kwargs))
                ok, value = self._conn.recv()
            except (EOFError, OSError) as err:
                self._process.join(1.0)
                raise PlanningChildDied(
                    f"the planning process ended (exit code {self._process.exitcode})"
                ) from err
        if not ok:
            raise value
        return value

    def kill(self) -> None:
        """End the child now, planning or idle (a call waiting on it raises
        :class:`PlanningChildDied`); from the process that made it."""
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5.0)  # reaped, not left a zombie until this process ends


def _serve(conn, parent: int) -> None:
    """The child's loop: calls until the pipe closes."""
    _end_with_parent(parent)
    while True:
        try:
            fn, args, kwargs = conn.recv()
        except (EOFError, OSError):
            return
        try:
            answer = (True, fn(*args, **kwargs))
        except BaseException as err:  # a policy's SystemExit is an answer too
            answer = (False, err)
        try:
            conn.send(answer)
        except Exception as err:  # an answer that does not pickle
            conn.send((False, RuntimeError(f"{answer[1]!r} could not be sent back: {err!r}")))


def _end_with_parent(parent: int) -> None:
    """In the child: exit when the serving process ``parent`` dies (killed for memory, SIGKILL,
    a SIGTERM it does not handle), which would leave the child holding its pipe."""
    try:  # Linux: the kernel sends SIGKILL when the parent thread ends
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent:  # it died before the call
                os._exit(0)
            return
    except (OSError, AttributeError):
        pass

    def watch() -> None:  # elsewhere: poll for the parent's end
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="eplb-parent-watch", daemon=True).start()
