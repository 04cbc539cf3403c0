"""``serve --workers N``: N forked processes accepting on one shared socket, supervised.

The parent binds the socket, forks the workers (each builds its own application after the fork,
so no event loop, thread or connection crosses it) and waits. A worker that dies on its own is
replaced; SIGTERM or SIGINT is passed to every worker, each shuts down gracefully, and the parent
exits 0 when all of them did.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable

log = logging.getLogger("llmrelay.server")

RESPAWN_PAUSE_SECONDS = 1.0
"""At least this long between two replacements of one worker (a worker failing at start-up)."""


def supervise(
    workers: int,
    sock: socket.socket,
    worker_main: Callable[[socket.socket], int],
    kill_after: float,
) -> int:
    """Run ``worker_main(sock)`` in ``workers`` forked processes until a signal; the exit status."""
    stopping = False
    children: dict[int, int] = {}  # pid -> slot
    started_at: dict[int, float] = {}  # slot -> last fork

    def spawn(slot: int) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                _die_with(parent)
                for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                    signal.signal(signum, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, set())
                status = worker_main(sock)
            except BaseException:
                log.exception("worker %d failed", slot)
            finally:
                os._exit(status)
        children[pid] = slot
        started_at[slot] = time.monotonic()

    watched = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    try:
        for slot in range(workers):
            spawn(slot)
        log.info("started %d workers (pids %s)", workers, " ".join(map(str, children)))
        failed = False
        deadline: float | None = None
        while children:
            timeout = 1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            info = signal.sigtimedwait(watched, timeout)
            if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
                if stopping:
                    _signal_all(children, signal.SIGINT)  # a second one: skip the graceful wait
                else:
                    stopping = True
                    deadline = time.monotonic() + kill_after
                    _signal_all(children, signal.SIGTERM)
            for pid, status in _reap(children):
                slot = children.pop(pid)
                code = os.waitstatus_to_exitcode(status)
                if stopping:
                    failed = failed or code != 0
                    continue
                log.error("worker %d (pid %d) exited with %d; starting another", slot, pid, code)
                pause = RESPAWN_PAUSE_SECONDS - (time.monotonic() - started_at[slot])
                if pause > 0:
                    time.sleep(pause)
                spawn(slot)
            if deadline is not None and time.monotonic() >= deadline and children:
                log.error("workers still running after %.0f s: killing them", kill_after)
                _signal_all(children, signal.SIGKILL)
                failed = True
                deadline = None
        return 1 if failed else 0
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, watched)


def _die_with(parent: int) -> None:
    """A worker gets SIGTERM (a graceful shutdown) when its supervisor dies, even by SIGKILL,
    instead of serving on as an orphan nobody will stop."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request above took effect
        os.kill(os.getpid(), signal.SIGTERM)


_PR_SET_PDEATHSIG = 1


def _signal_all(children: dict[int, int], signum: int) -> None:
    for pid in children:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _reap(children: dict[int, int]) -> list[tuple[int, int]]:
    done = []
    for pid in list(children):
        try:
            waited, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done.append((pid, 0))
            continue
        if waited:
            done.append((pid, status))
    return done
