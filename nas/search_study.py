"""The optuna study that holds a search: its storage (a journal file by default, or an RDB URL) and the
settings that every worker and every resume of it must share."""
from __future__ import annotations

import time
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock, JournalStorage

DEFAULT_JOURNAL = "study.journal"
LOCK_GRACE_S = 30  # optuna's default: a journal lock unchanged this long is taken for a killed writer's
SETTINGS_KEY = "nas:settings"
SCHEMA_RACE_RETRIES = 3
STORAGE_HELP = ("where the study lives: an RDB URL (sqlite:///search.db, postgresql://user:pass@host/db, "
                "mysql+pymysql://...) or the path of an optuna journal file; default OUT/study.journal. Workers "
                "that run the same command on one storage share the search; running it again resumes it")


def open_storage(url: str | None, out: Path) -> tuple[BaseStorage, str]:
    """(storage, how to name it to a user). A value with '://' is an RDB URL, anything else a journal file."""
    if url is None or "://" not in url:
        path = Path(url) if url else out / DEFAULT_JOURNAL
        if path.is_dir():
            raise ValueError(f"--storage {str(path)!r} is a folder; expected a journal file path or an RDB URL")
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(_journal_backend(path.absolute())), str(path)
    import sqlalchemy.exc

    for attempt in range(SCHEMA_RACE_RETRIES + 1):
        try:
            return RDBStorage(url), url
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError) as exc:
            # Two workers creating the tables at once: one loses ("table already exists", or a duplicate
            # schema version row); by the next try the tables are there.
            if attempt == SCHEMA_RACE_RETRIES:
                raise ValueError(f"--storage {url!r}: cannot open it ({exc.orig or exc})") from None
            time.sleep(0.5)
        except (ImportError, sqlalchemy.exc.SQLAlchemyError) as exc:
            raise ValueError(f"--storage {url!r}: cannot open it ({type(exc).__name__}: {exc})") from None


def _journal_backend(path: Path) -> JournalFileBackend:
    """The journal at an absolute path, so that its lock (a symlink to that path) resolves from the lock's
    folder: optuna's stale-lock release stats the link and, on a dangling one, waits forever."""
    _remove_dangling_lock(Path(f"{path}.lock"))  # the name optuna gives the lock
    return JournalFileBackend(str(path), lock_obj=JournalFileSymlinkLock(str(path), grace_period=LOCK_GRACE_S))


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


def open_study(storage: BaseStorage, name: str, sampler: optuna.samplers.BaseSampler, directions: list[str],
               settings: dict) -> optuna.Study:
    """Create the study, or load it to resume or to join it as another worker. A study started with other
    settings (budget, space, checkpoint, objective, GA parameters, seed, fitness split) is refused."""
    study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, directions=directions,
                                load_if_exists=True)
    saved = study.user_attrs.get(SETTINGS_KEY)
    if saved is None:
        study.set_user_attr(SETTINGS_KEY, settings)
        return study
    differ = [f"{key} {saved.get(key)!r} (now {value!r})" for key, value in settings.items() if saved.get(key) != value]
    if differ:
        raise ValueError(f"study {name!r} was started with other settings: {'; '.join(differ)}. Run it with the "
                         f"same options to resume it, or start another one with --study or --out")
    return study
