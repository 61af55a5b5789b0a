"""Stopping the command-line tools cleanly on SIGTERM as well as Ctrl-C.

Python's default SIGTERM action ends the process at once, without unwinding. The loky workers
that ``--backend loky`` lanes and the retriever fits run in are separate processes: they are not
told, keep training (or fitting) for as long as their task lasts, and an orphaned lane can write
checkpoints of a run that a restarted command is resuming at the same time. Turning SIGTERM into
``KeyboardInterrupt`` makes a ``kill``, a job scheduler's stop or a preemption notice take the
same path as Ctrl-C: joblib terminates its workers, the atomic writers remove their temporary
files, and the command exits with the conventional status (130 for SIGINT, 143 for SIGTERM).
"""
from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
from typing import Iterator

SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Interrupted(KeyboardInterrupt):
    """KeyboardInterrupt raised for a signal; ``signum`` says which."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(exc: KeyboardInterrupt) -> int:
    return SIGNAL_EXIT.get(getattr(exc, "signum", signal.SIGINT), 130)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises ``Interrupted`` in the main thread (no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, _frame):
        # Once: a second SIGTERM (a scheduler or a user repeating it) must not cut short the
        # cleanup the first one started. The previous handler is restored when the block ends.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def report(exc: KeyboardInterrupt, what: str) -> int:
    """Prints what survives an interruption and returns the exit status."""
    name = signal.Signals(getattr(exc, "signum", signal.SIGINT)).name
    print(f"interrupted ({name}): {what}", file=sys.stderr, flush=True)
    return exit_code(exc)


def run_child(cmd: list[str]) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True)``, except that an interruption of this
    process (Ctrl-C, or SIGTERM under ``sigterm_as_interrupt``) is passed on to the child as SIGTERM,
    so that a child suite command or data build stops its own workers (``subprocess.run`` would
    SIGKILL the child alone and leave its workers running). A Ctrl-C in a terminal reaches the child
    too (same process group), so then the child gets 30 s to stop by itself first. A child still
    alive 60 s after SIGTERM is killed."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            out, err = proc.communicate()
        except BaseException as exc:
            ctrl_c = isinstance(exc, KeyboardInterrupt) and not isinstance(exc, Interrupted)
            if not (ctrl_c and _exits_within(proc, 30)):
                proc.terminate()
                if not _exits_within(proc, 60):
                    proc.kill()
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _exits_within(proc: subprocess.Popen, seconds: float) -> bool:
    try:
        proc.wait(timeout=seconds)
        return True
    except subprocess.TimeoutExpired:
        return False
