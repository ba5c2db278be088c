"""Liveness of the workers that share a study: a trial records its worker's identity (`worker_identity`), and a
trial left RUNNING by a dead worker is marked FAIL (`fail_dead_trials`) so that its arch is planned again: on an
RDB storage once its worker's heartbeat (`heartbeat`) has stopped, on any host; on every storage at once when
its worker was a process of this host that is gone."""
from __future__ import annotations

import os
import socket
import threading
import warnings
from contextlib import contextmanager

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState

from nas.search.optuna_adapter import storage_of, trial_id
from nas.search.study import StaleTrialCounter

WORKER_KEY = "nas:worker"  # trial system attribute: the worker's identity (`worker_identity`)


REAP_EVERY_S = 10.0  # how often a waiting worker looks for trials of dead workers


def worker_identity() -> list:
    """[host, pid space, pid, process start time]. The pid space (boot id and pid namespace) says whether
    this process can see that pid at all; the start time tells a live process from a reused pid."""
    return [socket.gethostname(), _pid_space(), os.getpid(), _process_start(os.getpid())]


def _pid_space() -> str:
    try:
        boot = open("/proc/sys/kernel/random/boot_id").read().strip()
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


def _process_start(pid: int) -> str | None:
    try:  # Linux: field 22 of /proc/PID/stat, in clock ticks since boot
        return open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[19]
    except OSError:
        return None


def _dead(worker: list) -> bool:
    """Whether a worker is known to be gone. Only a process of this host can be judged: of this boot and pid
    namespace (by its pid and start time), or of an earlier boot (gone with it)."""
    host, space, pid, start = worker
    if host != socket.gethostname() or not space:
        return False
    mine = _pid_space()
    if space != mine:
        return space.split(":")[0] != mine.split(":")[0]  # another boot: dead; another namespace: cannot tell
    if worker == worker_identity():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process holds the pid now
        return start is not None
    return start is not None and _process_start(pid) != start


def fail_dead_local_trials(study: optuna.Study) -> int:
    """Mark FAIL the RUNNING trials whose worker is known to be gone (a crash or a kill on this host); their
    archs go back to the plan. Trials of other hosts are left alone. Returns how many were failed."""
    failed = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.system_attrs.get(WORKER_KEY)
        if worker and len(worker) == 4 and _dead(worker):
            storage_of(study).set_trial_system_attr(trial_id(study, t), "fail_reason", "its worker process died")
            storage_of(study).set_trial_state_values(trial_id(study, t), TrialState.FAIL)
            failed += 1
    return failed


def fail_dead_trials(study: optuna.Study) -> int:
    """Mark FAIL the RUNNING trials whose worker is gone, so their archs go back to the plan: with heartbeats (RDB
    storages), those whose heartbeat stopped for the grace period, whatever their host (optuna's
    `fail_stale_trials`); on every storage, those of a process of this host known to be dead, at once. Returns
    how many this call failed."""
    counter = getattr(storage_of(study), "get_heartbeat_stale_trial_callback", lambda: None)()
    stale = 0
    if isinstance(counter, StaleTrialCounter):
        before = counter.failed
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        stale = counter.failed - before
    return stale + fail_dead_local_trials(study)


@contextmanager
def heartbeat(study: optuna.Study, trial_id: int):
    """Record the trial's heartbeat every heartbeat interval while the block runs, on a storage that keeps them
    (RDB with `heartbeat_interval`), so that other workers can tell a live trial from one of a dead worker."""
    storage = storage_of(study)
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    if interval is None:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat of trial {trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
