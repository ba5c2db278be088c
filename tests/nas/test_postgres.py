"""Many workers on a real database: two `nas evolve` workers share one study on a PostgreSQL server of the test's
own (and on SQLite); one is killed (-9) mid-trial, and its claim is released by its stopped heartbeat."""
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nas.search.sampler import CLAIM_KEY
from nas.search.workers import WORKER_KEY
from tests.nas.test_evolve import (checkpoint, finish, one_thread, uninterrupted, wait_for,  # noqa: F401 (fixtures)
                                   worker)

SERVER_START_GUARD_S = 120  # a hang guard for initdb and pg_ctl


def server_binary(name: str) -> str | None:
    """A PostgreSQL server program: on the PATH, else Debian's /usr/lib/postgresql/VERSION/bin (the newest)."""
    return shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)),
                                      None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """The URL of a fresh PostgreSQL server on 127.0.0.1 (initdb and pg_ctl in a temporary folder, stopped at
    the end); skips, saying why, when none can be started."""
    pytest.importorskip("psycopg2", reason="no PostgreSQL driver: pip install -e '.[dev]' (psycopg2-binary)")
    initdb, pg_ctl = server_binary("initdb"), server_binary("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("no PostgreSQL server (initdb, pg_ctl): apt-get install postgresql")
    folder = Path(tempfile.mkdtemp(prefix="nas-pg-"))  # not in pytest's tmp_path: the server's user must reach it
    as_user = []
    if os.geteuid() == 0:  # initdb refuses to run as root: the server runs as Debian's postgres user
        try:
            shutil.chown(folder, "postgres")
        except (LookupError, OSError) as exc:
            pytest.skip(f"running as root, and no 'postgres' user to run the server as: {exc}")
        as_user = ["runuser", "-u", "postgres", "--"]

    def run(*argv: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run([*as_user, *argv], capture_output=True, text=True, timeout=SERVER_START_GUARD_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return subprocess.CompletedProcess(argv, 1, "", str(exc))

    data, port = folder / "data", free_port()
    steps = ([initdb, "-D", str(data), "-U", "nas", "--auth=trust"],
             [pg_ctl, "-D", str(data), "-l", str(folder / "server.log"), "-w", "-t", str(SERVER_START_GUARD_S), "-o",
              f"-p {port} -h 127.0.0.1 -k {folder} -c fsync=off", "start"])
    for argv in steps:
        done = run(*argv)
        if done.returncode:
            shutil.rmtree(folder, ignore_errors=True)
            pytest.skip(f"cannot start a PostgreSQL server: {Path(argv[0]).name} failed: "
                        f"{(done.stderr or done.stdout).strip()[-300:]}")
    try:
        yield f"postgresql+psycopg2://nas@127.0.0.1:{port}/postgres"
    finally:
        run(pg_ctl, "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["postgresql", "sqlite"])
def database(request, tmp_path) -> str:
    return request.getfixturevalue("postgres") if request.param == "postgresql" else f"sqlite:///{tmp_path / 's.db'}"


def test_a_killed_worker_of_another_host_is_released_by_its_heartbeat(checkpoint, uninterrupted, database, tmp_path):
    """One worker, passing for one of another host (its pid cannot be checked from here), is killed (-9) in its
    first evaluation while the other runs. The other fails the dead worker's trial once its heartbeat has
    stopped, evaluates that arch itself and finishes the search: each planned arch evaluated once, none lost."""
    options, marker = ("--storage", database, "--heartbeat", "1"), tmp_path / "parked"
    doomed = worker(checkpoint, tmp_path / "doomed", *options, PARK_AT_EVALUATION=0, PARK_MARKER=marker,
                    NAS_TEST_HOSTNAME="another-host")
    wait_for(marker.exists, "the first evaluation of the worker to kill", doomed)
    survivor = worker(checkpoint, tmp_path / "survivor", *options)
    study = optuna.load_study(study_name="evolve", storage=database)

    def survivor_evaluated_one() -> bool:
        return any(t.system_attrs[WORKER_KEY][0] != "another-host"
                   for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    wait_for(survivor_evaluated_one, "evaluation of the surviving worker", survivor)
    doomed.kill()
    doomed.wait()
    _, stderr = finish(survivor)
    assert survivor.returncode == 0, stderr
    trials = study.get_trials()
    complete = [t.system_attrs[CLAIM_KEY] for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(complete) == sorted(c.arch.hash for c in uninterrupted[0].rows)  # none twice, none lost
    dead = [t for t in trials if t.system_attrs[WORKER_KEY][0] == "another-host"]
    assert [t.state for t in dead] == [TrialState.FAIL]
    assert dead[0].system_attrs[CLAIM_KEY] in complete  # its claim was released: the survivor evaluated the arch
