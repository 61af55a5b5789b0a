"""SIGTERM stops the command-line tools and every worker process they started (benchmark/interrupt.py).

Without the handler, a ``kill`` of ``python -m benchmark --backend loky`` or of a data build ends
the parent only; its loky workers go on training or fitting the retriever as orphans (measured on
the development machine: an ML-1M build's two retriever workers kept running after their parent
was killed). Each test starts a real command in its own process group, waits until its loky
workers exist, sends SIGTERM to the parent alone and checks the exit status, the message, that no
process of the group is left, and that nothing half-written was stored.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from benchmark.interrupt import Interrupted, exit_code, run_child, sigterm_as_interrupt

ROOT = Path(__file__).resolve().parents[1]
SMALL_SET = ["--set", "data.max_users=150", "data.k_core=5", "data.mf_dim=16", "data.mf_max_epochs=3",
             "data.mf_patience=2", "data.fill=topk"]


def test_sigterm_raises_interrupted_inside_the_block_only():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as info:
        with sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs at the next bytecode boundary; never reached
    assert info.value.signum == signal.SIGTERM and exit_code(info.value) == 143
    assert isinstance(info.value, KeyboardInterrupt)
    assert exit_code(KeyboardInterrupt()) == 130
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_second_sigterm_does_not_cut_the_cleanup_short():
    before = signal.getsignal(signal.SIGTERM)
    cleaned = False
    with pytest.raises(Interrupted):
        with sigterm_as_interrupt():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            finally:
                assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
                os.kill(os.getpid(), signal.SIGTERM)  # ignored: this cleanup runs to its end
                time.sleep(0.1)
                cleaned = True
    assert cleaned
    assert signal.getsignal(signal.SIGTERM) is before


def _processes() -> list[tuple[int, int, int, str]]:
    """(pid, parent pid, process group, command line) of every live, non-zombie process (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if fields[0] != "Z":
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found.append((int(entry.name), int(fields[1]), int(fields[2]), cmdline))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _group(pgid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every live process in process group ``pgid``."""
    return [(pid, cmd) for pid, _, group, cmd in _processes() if group == pgid]


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids of every live process."""
    tree: dict[int, list[int]] = {}
    for pid, parent, _, _ in _processes():
        tree.setdefault(parent, []).append(pid)
    return tree


def _descendants(pid: int) -> set[int]:
    tree, found, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pids: set[int]) -> set[int]:
    tree = _children()
    return {p for p in pids if any(p in kids for kids in tree.values())}


def _terminate_when_workers_run(args: list[str], tmp_path: Path, wait_for: str | None = None):
    """Starts ``python args`` in a new session, SIGTERMs its parent once loky workers run (and, with
    ``wait_for``, once that text is in stdout); returns (status, stdout, stderr, processes left)."""
    if not Path("/proc/self/stat").exists():
        pytest.fail("this test reads /proc (Linux)")
    env = {**os.environ, "DNR_BENCH_CACHE": str(tmp_path / "cache")}
    env.pop("DNR_BENCH_DATA", None)
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out.open("w") as fo, err.open("w") as fe:
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=fo, stderr=fe,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            ready = (wait_for is None or wait_for in out.read_text()) and any(
                "loky" in cmd and pid != proc.pid for pid, cmd in _group(proc.pid))
            if ready or proc.poll() is not None:
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"finished before its workers were seen:\n{err.read_text()}"
        assert ready, "no loky worker started within 240 s"
        time.sleep(2)  # let the workers get into their task
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=120)
        deadline = time.monotonic() + 30
        while _group(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        return status, out.read_text(), err.read_text(), _group(proc.pid)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_sigterm_stops_a_data_build_and_its_retriever_workers(tmp_path):
    # The whole ml-100k (bundled with RecBole): its retriever fits take tens of seconds in 2 workers.
    status, _, err, left = _terminate_when_workers_run(
        ["-m", "benchmark.data", "--dataset", "ml-100k", "--no-download", "--quiet", "--jobs", "2",
         "--cache-dir", str(tmp_path / "cache")], tmp_path)
    assert left == [], left
    assert status == 143, err
    assert "interrupted (SIGTERM)" in err and "run the command again" in err
    assert not list((tmp_path / "cache").glob("lists/*/meta.json"))


def test_sigterm_stops_loky_lanes_and_stores_no_record(tmp_path):
    results = tmp_path / "results"
    status, out, err, left = _terminate_when_workers_run(
        ["-m", "benchmark", "--methods", "prm,dnr-b", "--dataset", "ml-100k", "--backend", "loky", "--n-jobs",
         "2", "--threads", "1", "--no-download", "--quiet", "--results-dir", str(results), *SMALL_SET],
        tmp_path, wait_for="runs asked for")
    assert left == [], left
    assert status == 143, err
    assert "interrupted (SIGTERM)" in err and "resumes from its last completed epoch" in err
    # Paper-profile runs take minutes: none finished, so no record may exist (only checkpoints).
    assert not list(results.rglob("seed*.json")), sorted(results.rglob("*"))
    assert not list(results.rglob(".*.tmp*")) and not [p for p in results.rglob(".*") if p.is_file()]


def test_run_child_passes_an_interruption_on_so_the_childs_workers_stop_too(tmp_path):
    """``benchmark.perf`` runs data builds and suite commands as children; SIGTERM to perf must
    reach them as SIGTERM (not SIGKILL of the child alone), so that they stop their loky workers."""
    env_cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "benchmark.data", "--dataset", "ml-100k", "--no-download", "--quiet", "--jobs", "2",
           "--cache-dir", str(env_cache)]
    seen: set[int] = set()
    before = _descendants(os.getpid())  # e.g. a loky executor an earlier test left in this process

    def watch():  # once the child's loky workers run, remember its whole tree and SIGTERM this process
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            tree = _descendants(os.getpid()) - before
            if len(tree) >= 3:  # the child, its resource tracker and at least one worker
                seen.update(tree)
                time.sleep(2)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with pytest.raises(Interrupted):
        with sigterm_as_interrupt():
            run_child(cmd)
    watcher.join(timeout=5)
    assert len(seen) >= 3, "the child's workers were never seen"
    deadline = time.monotonic() + 30
    while _alive(seen) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _alive(seen) == set()
    assert not list(env_cache.glob("lists/*/meta.json"))


def test_run_child_returns_what_subprocess_run_would():
    done = run_child([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"])
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
