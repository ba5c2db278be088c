"""Faults around `nas evolve`, each reproduced on a real child process or a real file: a kill -9 that leaves
the journal's lock behind (with a relative --out), a torn or foreign journal, Ctrl-C and SIGTERM."""
import json
import os
from pathlib import Path

from optuna.trial import TrialState

from nas.evolution_sampler import CLAIM_KEY
from search_spaces import load_arch
from tests.nas.test_evolve import (checkpoint, completed, finish, one_thread, uninterrupted,  # noqa: F401 (fixtures)
                                   wait_for, worker)

SET_TRIAL_STATE = 6  # optuna's JournalOperation.SET_TRIAL_STATE_VALUES


def complete_trials(journal: Path) -> int:
    """Trials that the journal file records as COMPLETE, read from its lines (a line being written is skipped)."""
    records = []
    for line in journal.read_bytes().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return sum(r.get("op_code") == SET_TRIAL_STATE and r.get("state") == TrialState.COMPLETE for r in records)


def assert_finished_like(out: Path, reference) -> None:
    """The study in OUT evaluated each of the reference's archs once and reports the same best."""
    hashes = [t.system_attrs[CLAIM_KEY] for t in completed(None, out)]
    assert sorted(hashes) == sorted(c.arch.hash for c in reference.rows)
    assert load_arch(out / "best.yaml")[0] == reference.best.arch


def test_a_search_killed_holding_the_journal_lock_resumes_with_a_relative_out(checkpoint, uninterrupted, tmp_path):
    """kill -9 inside a journal append (the lock held) of a search with a relative --out leaves the lock behind;
    the same command run again frees it (optuna's stale-lock release) and finishes the search."""
    out, marker = Path("runs/evolve"), tmp_path / "parked"
    process = worker(checkpoint, out, cwd=tmp_path, PARK_IN_LOCK_AFTER=1, LOCK=out / "study.journal.lock",
                     PARK_MARKER=marker)
    wait_for(marker.exists, "journal append after the first evaluation", process)
    process.kill()
    process.wait()
    journal = tmp_path / out / "study.journal"
    assert complete_trials(journal) == 1 and os.path.lexists(f"{journal}.lock")
    rerun = worker(checkpoint, out, cwd=tmp_path)
    _, stderr = finish(rerun)
    assert rerun.returncode == 0, stderr
    assert_finished_like(tmp_path / out, uninterrupted[0])


def test_a_dangling_lock_of_an_earlier_version_is_freed(checkpoint, uninterrupted, tmp_path):
    """Earlier versions pointed the lock at the journal's relative path, which does not resolve from the lock's
    folder; optuna never frees such a lock. A rerun removes it once it is older than optuna's grace period, and
    continues the finished search with one more generation."""
    out = tmp_path / "runs" / "evolve"
    out.mkdir(parents=True)
    (out / "study.journal").write_bytes((uninterrupted[1] / "study.journal").read_bytes())
    lock = out / "study.journal.lock"
    lock.symlink_to("runs/evolve/study.journal")
    os.utime(lock, (0, 0), follow_symlinks=False)
    rerun = worker(checkpoint, "runs/evolve", "--generations", "4", cwd=tmp_path)
    _, stderr = finish(rerun)
    assert rerun.returncode == 0, stderr
    hashes = {t.system_attrs[CLAIM_KEY] for t in completed(None, out)}
    assert len(hashes) == 4 * 6 and hashes > {c.arch.hash for c in uninterrupted[0].rows}
