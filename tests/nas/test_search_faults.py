"""Faults around `nas evolve`, each reproduced on a real child process or a real file: a kill -9 that leaves
the journal's lock behind (with a relative --out), a torn or foreign journal, Ctrl-C and SIGTERM."""
import csv
import json
import os
import shlex
import signal
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nas.cli import main
from nas.search.sampler import CLAIM_KEY
from nas.interrupts import Stopped, set_handlers, stop_on_signals
from nas.search.study import _GuardedLock, open_storage, repair_journal
from search_spaces import load_arch
from tests.nas.test_evolve import (checkpoint, completed, evolve_argv, finish, one_thread,  # noqa: F401 (fixtures)
                                   uninterrupted, wait_for, worker)

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


def killed_search(checkpoint: Path, out: Path, evaluated: int) -> Path:
    """The journal of a search in OUT killed (-9) in its evaluation `evaluated` + 1."""
    marker = out / "parked"
    process = worker(checkpoint, out, PARK_AT_EVALUATION=evaluated, PARK_MARKER=marker)
    wait_for(marker.exists, f"evaluation {evaluated + 1}", process)
    process.kill()
    process.wait()
    return out / "study.journal"


def test_a_search_killed_holding_the_journal_lock_resumes_with_a_relative_out(checkpoint, uninterrupted, tmp_path):
    """kill -9 inside a journal append (the lock held) of a search with a relative --out leaves the lock behind;
    the same command run again frees it (optuna's stale-lock release) and finishes the search."""
    out, marker = Path("runs/evolve"), tmp_path / "parked"
    # parked in the first append once the 2nd evaluation has begun: its result's record, the 1st trial complete
    process = worker(checkpoint, out, cwd=tmp_path, PARK_IN_LOCK_AFTER=2, LOCK=out / "study.journal.lock",
                     PARK_MARKER=marker)
    wait_for(marker.exists, "journal append in the second evaluation", process)
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


def test_a_torn_journal_end_is_refused_untouched_then_repaired(checkpoint, uninterrupted, tmp_path, capsys):
    """The last 100 bytes of a killed search's journal cut: the search stops with one line, appends nothing;
    --repair-journal cuts the torn record, keeps the complete ones and the search finishes as if never torn."""
    journal = killed_search(checkpoint, tmp_path, evaluated=3)
    torn = journal.read_bytes()[:-100]
    journal.write_bytes(torn)
    assert main(evolve_argv(checkpoint, tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{journal}: the last record of the journal is torn" in err
    assert "run again with --repair-journal" in err
    assert journal.read_bytes() == torn  # nothing appended after the torn line
    assert main(evolve_argv(checkpoint, tmp_path, "--repair-journal")) == 0
    report = " ".join(capsys.readouterr().err.split())  # rich wraps lines
    assert f"repaired {journal}: cut " in report and "trials survived (3 complete)" in report
    assert_finished_like(tmp_path, uninterrupted[0])


def test_a_file_that_is_not_a_journal_is_named(checkpoint, tmp_path, capsys):
    garbage = tmp_path / "garbage.journal"
    garbage.write_text("a text file\nnot a journal\n")
    assert main(evolve_argv(checkpoint, tmp_path, "--storage", str(garbage))) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{garbage}: not an optuna journal" in err
    assert garbage.read_text() == "a text file\nnot a journal\n"


def test_nothing_is_appended_after_a_line_torn_during_a_run(tmp_path):
    """Another writer killed mid-append while this one runs: its next append is refused, the file untouched. A
    record that an earlier version appended after the torn line is named; the repair keeps the records before."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=open_storage(None, tmp_path)[0], study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    journal = tmp_path / "study.journal"
    records = journal.read_bytes().splitlines(keepends=True)
    with journal.open("ab") as f:
        f.write(records[-1][:40])  # the start of a record, as a writer killed mid-append leaves it
    torn = journal.read_bytes()
    with pytest.raises(ValueError, match="the last record of the journal is torn"):
        study.ask()
    assert journal.read_bytes() == torn
    with journal.open("ab") as f:  # what earlier versions appended after a torn line: two records
        f.write(records[-1] + records[-1])
    with pytest.raises(ValueError, match=f"record {len(records) + 1} of the journal is damaged and 1 more follow"):
        open_storage(None, tmp_path)
    assert repair_journal(None, tmp_path).endswith(f"{len(records)} records kept, 3 trials survived (3 complete)")
    reloaded = optuna.load_study(study_name="s", storage=open_storage(None, tmp_path)[0])
    assert [t.state for t in reloaded.trials] == [TrialState.COMPLETE] * 3


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_write_the_outputs_and_say_how_to_resume(checkpoint, uninterrupted, tmp_path, capsys,
                                                                    signum, status):
    """The signal lands in the third evaluation: the search writes best.yaml, candidates.csv and search.png of
    the two evaluated, ends with one line (exit 128 + signal, no traceback), and its command resumes it."""
    marker = tmp_path / "parked"
    process = worker(checkpoint, tmp_path, PARK_AT_EVALUATION=2, PARK_MARKER=marker)
    wait_for(marker.exists, "third evaluation", process)
    assert complete_trials(tmp_path / "study.journal") == 2
    process.send_signal(signum)
    _, stderr = finish(process)
    assert process.returncode == status and "Traceback" not in stderr, stderr
    last = stderr.splitlines()[-1]
    assert last.startswith(f"nas evolve: stopped by {signal.Signals(signum).name}; 2 candidates evaluated, the "
                           f"best so far in {tmp_path / 'best.yaml'}")
    with (tmp_path / "candidates.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 2
    assert load_arch(tmp_path / "best.yaml")[0] and (tmp_path / "search.png").stat().st_size
    command = shlex.split(last.partition("; resume with: ")[2])
    assert command[:2] == ["nas", "evolve"] and main(command[1:]) == 0
    capsys.readouterr()
    assert_finished_like(tmp_path, uninterrupted[0])


def test_a_stop_inside_the_journal_lock_is_held_until_the_lock_is_taken(tmp_path, monkeypatch):
    """A Ctrl-C raised inside optuna's acquire made it release a lock it did not hold (a RuntimeError, or a
    FileNotFoundError on its .rename file: exit 2 instead of 130). Now the stop comes once the lock is held."""
    journal = tmp_path / "study.journal"
    journal.touch()
    lock_file = Path(f"{journal}.lock")
    symlink = os.symlink

    def interrupted_symlink(*args, **kwargs):  # the Ctrl-C arrives while optuna takes the lock
        signal.raise_signal(signal.SIGINT)
        return symlink(*args, **kwargs)

    monkeypatch.setattr(os, "symlink", interrupted_symlink)
    previous = stop_on_signals()
    try:
        lock = _GuardedLock(journal, "study.journal")
        with pytest.raises(Stopped):
            lock.acquire()
        assert lock_file.is_symlink()  # taken whole before the stop was raised
        lock.release()
        assert not os.path.lexists(lock_file) and list(tmp_path.iterdir()) == [journal]  # no .rename leftover
    finally:
        set_handlers(previous)
