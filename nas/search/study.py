"""The optuna study that holds a search: its storage (a journal file by default, or an RDB URL) and the
settings that every worker and every resume of it must share.

A journal file is one JSON record per line, appended under a lock. A writer killed mid-append leaves a torn
last line, and a record appended after it makes both unreadable, so a journal is checked when it is opened
and before every append; `repair_journal` cuts it back to its last complete record.
"""
from __future__ import annotations

import io
import json
import os
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock, JournalStorage
from optuna.trial import FrozenTrial

from nas.interrupts import signals_deferred
from nas.options import HEARTBEAT_S
from nas.run_folders import DEFAULT_JOURNAL

LOCK_GRACE_S = 30  # optuna's default: a journal lock unchanged this long is taken for a killed writer's
RECORD_START = b'{"op_code":'  # how every record of an optuna journal begins
CREATE_TRIAL, SET_TRIAL_STATE, COMPLETE = 4, 6, 1  # optuna's JournalOperation codes and TrialState.COMPLETE
SETTINGS_KEY = "nas:settings"
SCHEMA_RACE_RETRIES = 3


def open_storage(url: str | None, out: Path, heartbeat_s: int = HEARTBEAT_S) -> tuple[BaseStorage, str]:
    """(storage, how to name it to a user). A value with '://' is an RDB URL, anything else a journal file. An
    RDB storage keeps a heartbeat of running trials every `heartbeat_s` and fails those silent for twice that."""
    if url is None or "://" not in url:
        path, name = _journal_path(url, out)
        _check_journal(path, name)
        return JournalStorage(JournalFileBackend(str(path), lock_obj=_GuardedLock(path, name))), name
    import sqlalchemy.exc

    for attempt in range(SCHEMA_RACE_RETRIES + 1):
        try:
            return _rdb_storage(url, heartbeat_s), url
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError) as exc:
            # Two workers creating the tables at once: one loses ("table already exists", or a duplicate
            # schema version row); by the next try the tables are there.
            if attempt == SCHEMA_RACE_RETRIES:
                raise ValueError(f"--storage {url!r}: cannot open it ({exc.orig or exc})") from None
            time.sleep(0.5)
        except (ImportError, sqlalchemy.exc.SQLAlchemyError) as exc:
            raise ValueError(f"--storage {url!r}: cannot open it ({type(exc).__name__}: {exc})") from None


class StaleTrialCounter:
    """optuna's heartbeat-stale trial callback (RDBStorage's `heartbeat_stale_trial_callback`): counts the trials
    that this process failed for a missing heartbeat."""

    def __init__(self):
        self.failed = 0

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.failed += 1


def _rdb_storage(url: str, heartbeat_s: int) -> RDBStorage:
    with warnings.catch_warnings():  # optuna marks the heartbeat arguments experimental
        warnings.simplefilter("ignore", ExperimentalWarning)
        return RDBStorage(url, heartbeat_interval=heartbeat_s, grace_period=2 * heartbeat_s,
                          heartbeat_stale_trial_callback=StaleTrialCounter())


def repair_journal(url: str | None, out: Path) -> str:
    """Cut a journal back to its last complete record, keeping every one before; a line saying what was cut and
    how many trials survived."""
    if url and "://" in url:
        raise ValueError(f"--repair-journal: --storage {url!r} is a database, not a journal file")
    path, name = _journal_path(url, out)
    with _journal_lock(path):  # no writer is mid-append while the file is read and cut
        data, records, end = _read_journal(path, name)
        if end == len(data):
            return f"{name}: nothing to repair ({len(records)} records, all complete)"
        with open(path, "r+b") as f:
            f.truncate(end)
            os.fsync(f.fileno())
    trials = sum(r["op_code"] == CREATE_TRIAL for r in records)
    complete = sum(r["op_code"] == SET_TRIAL_STATE and r.get("state") == COMPLETE for r in records)
    return (f"repaired {name}: cut {len(data) - end} bytes after record {len(records)}; {len(records)} records "
            f"kept, {trials} trials survived ({complete} complete)")


def _journal_path(url: str | None, out: Path) -> tuple[Path, str]:
    """(the journal's absolute path, its name as the user gave it). Optuna's lock is a symlink to the journal's
    path: a relative one does not resolve from the lock's folder, and optuna's release of a stale lock (it stats
    the link) then waits forever on a lock that a killed writer left."""
    path = Path(url) if url else out / DEFAULT_JOURNAL
    if path.is_dir():
        raise ValueError(f"--storage {str(path)!r} is a folder; expected a journal file path or an RDB URL")
    path.parent.mkdir(parents=True, exist_ok=True)
    open(path, "ab").close()  # as optuna creates it; touch() would move the mtime that its stale-lock check reads
    _remove_dangling_lock(Path(f"{path.absolute()}.lock"))  # the name optuna gives the lock
    return path.absolute(), str(path)


def _remove_dangling_lock(lock: Path) -> None:
    """Remove a journal lock that points nowhere (earlier versions linked it to a relative path) once it is as old
    as optuna's grace period: optuna itself never frees it."""
    try:
        age = time.time() - lock.lstat().st_mtime
    except FileNotFoundError:
        return
    if lock.is_symlink() and not lock.exists():
        time.sleep(max(0.0, LOCK_GRACE_S - age))
        if lock.is_symlink() and not lock.exists():
            lock.unlink(missing_ok=True)


@contextmanager
def _journal_lock(path: Path):
    """Hold the journal's lock (optuna's own, so that workers appending meanwhile wait)."""
    lock = _StopSafeLock(str(path), grace_period=LOCK_GRACE_S)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _check_journal(path: Path, name: str) -> None:
    """Refuse a file that is not an optuna journal, or one that a killed writer left torn."""
    with _journal_lock(path):  # a live writer's append is never taken for a torn one
        data, records, end = _read_journal(path, name)
    if end == len(data):
        return
    later = data[end:].rstrip(b"\n").count(b"\n")
    if not later:
        raise ValueError(_torn(name))
    raise ValueError(f"{name}: record {len(records) + 1} of the journal is damaged and {later} more follow it "
                     f"(records written after a torn one); --repair-journal cuts the journal there, keeping the "
                     f"{len(records)} records before it")


def _read_journal(path: Path, name: str) -> tuple[bytes, list[dict], int]:
    """(the file's bytes, its complete records from the start, the offset where they end); refuses a file that
    is not an optuna journal."""
    data = path.read_bytes()
    records, end = _complete_records(data)
    if not records and end < len(data) and not data.startswith(RECORD_START):
        hint = f" (an SQLite database: --storage sqlite:///{name})" if data.startswith(b"SQLite format 3") else ""
        raise ValueError(f"{name}: not an optuna journal{hint}; give --storage a journal file, a new path or an "
                         "RDB URL")
    return data, records, end


def _complete_records(data: bytes) -> tuple[list[dict], int]:
    """The journal's complete, readable records from its start, and the byte offset where they end."""
    records, end = [], 0
    for line in io.BytesIO(data):  # lines end at b"\n" only, as optuna reads them
        if not line.endswith(b"\n"):
            break
        try:
            record = json.loads(line)
        except ValueError:  # JSON and UTF-8 errors alike
            break
        if not isinstance(record, dict) or "op_code" not in record:
            break
        records.append(record)
        end += len(line)
    return records, end


def _torn(name: str) -> str:
    return (f"{name}: the last record of the journal is torn (a writer was killed while appending it); run again "
            "with --repair-journal to cut it, keeping every complete record")


class _StopSafeLock(JournalFileSymlinkLock):
    """Optuna's journal lock, with Ctrl-C / SIGTERM held while it is taken or given back.

    A stop raised inside optuna's acquire makes it release a lock it may not hold, and one raised inside its release
    between rename and unlink ends in a FileNotFoundError (exit 2, not 130). Taking the lock waits only for another
    writer's append (milliseconds), or up to LOCK_GRACE_S for a killed writer's lock."""

    def acquire(self) -> bool:
        with signals_deferred():
            return super().acquire()

    def release(self) -> None:
        with signals_deferred():
            super().release()


class _GuardedLock(_StopSafeLock):
    """The journal lock, refused while the journal ends in a torn line (a writer killed mid-append): optuna
    appends as soon as it holds the lock, and a record appended to a torn line makes both unreadable."""

    def __init__(self, path: Path, name: str):
        super().__init__(str(path), grace_period=LOCK_GRACE_S)
        self.path, self.name = path, name

    def acquire(self) -> bool:
        with signals_deferred():  # taken and checked as one step: a stop between them would leave it held
            super().acquire()
            if not _ends_whole(self.path):
                self.release()
                raise ValueError(_torn(self.name))
        return True


def _ends_whole(path: Path) -> bool:
    with open(path, "rb") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def open_study(storage: BaseStorage, name: str, sampler: optuna.samplers.BaseSampler, directions: list[str],
               settings: dict, metric_names: list[str], before: dict | None = None) -> optuna.Study:
    """Create the study, or load it to resume or to join it as another worker. A study started with other
    settings (budget, space, checkpoint, objective, fitness, GA parameters, seed, fitness split) is refused; a
    setting its record lacks had the value `before` gives (it was recorded only later). Its objectives are named
    `metric_names` (optuna's dashboard says "Objective 0" otherwise)."""
    study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, directions=directions,
                                load_if_exists=True)
    saved = study.user_attrs.get(SETTINGS_KEY)
    if saved is None:
        study.set_user_attr(SETTINGS_KEY, settings)
    else:
        saved = {**(before or {}), **saved}
        # both ways: a setting recorded only when not the default (strategy) may be missing on either side
        differ = [f"{key} {saved.get(key, 'default')!r} (now {settings.get(key, 'default')!r})"
                  for key in {**saved, **settings} if saved.get(key) != settings.get(key)]
        if differ:
            raise ValueError(f"study {name!r} was started with other settings: {'; '.join(differ)}. Run it with the "
                             f"same options to resume it, or start another one with --study or --out")
    if study.metric_names != metric_names:  # a study of before they were named gets them too
        with warnings.catch_warnings():  # optuna marks set_metric_names experimental
            warnings.simplefilter("ignore", ExperimentalWarning)
            study.set_metric_names(metric_names)
    return study
