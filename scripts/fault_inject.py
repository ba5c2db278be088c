"""Fault injection: kill -9 and Ctrl-C the CLI at random points, tear and corrupt its files, and check each outcome.

    python scripts/fault_inject.py --out /tmp/faults [--seed 0] [--train-kills 5] [--search-kills 3] [--export-kills 3]

Every fault ends in one of four verdicts:
- resumed identical: rerunning the same command (with --resume for training) finished, and its results equal those
  of an uninterrupted reference run (training: every tensor of the final checkpoint and every logged step; search:
  best.yaml and the evaluated candidates; export: the folder's files byte for byte);
- refused cleanly: a damaged file was refused with exit status 2 and one line, no traceback;
- lost: the work could not be continued (a rerun failed, or the fault left nothing usable);
- silently wrong: a command exited 0 with results that differ from the reference, or a mixed export folder passed.
The last line is the summary: "N faults, M resumed identical, R refused cleanly, L lost, W silently wrong".

Training and search are hit at events: a random 0-0.5 s after the k-th line of metrics.jsonl (k random), or after
the k-th trial record of the search journal. An export is hit at a random time in the last 40% of a whole export's
duration (loading, measuring and writing; its write phase is too short to wait for), so every run hits different
places. Children run with one torch thread, so the uninterrupted and the resumed runs are comparable bit for bit.
Every wait is bounded (--timeout per command): the script cannot hang.
"""
from __future__ import annotations

import argparse
import csv
import filecmp
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

TRAIN = ["train-supernet", "--train-subset", "192", "--holdout", "100", "--epochs", "4", "--batch-size", "32",
         "--save-every", "5", "--log-every", "1", "--eval-random", "0", "--threads", "1", "--device", "cpu"]
SEARCH = ["evolve", "--flops", "20M", "--population", "6", "--generations", "3", "--topk", "3", "--mutations", "2",
          "--crossovers", "2", "--batch-size", "100", "--device", "cpu"]
TRIAL_STATE_RECORD = re.compile(rb'"op_code":\s*6\b')  # optuna's JournalOperation.SET_TRIAL_STATE_VALUES
EXPORT_FILES = ("arch.yaml", "model.safetensors", "meta.json")


class Faults:
    def __init__(self, args):
        self.args, self.rng, self.rows = args, random.Random(args.seed), []
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    # --- running the CLI ---------------------------------------------------------------------------------
    def nas(self, *argv, check=False) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "nas", *map(str, argv)], env=self.env, capture_output=True,
                              text=True, timeout=self.args.timeout)
        if check and done.returncode:
            raise SystemExit(f"fault_inject: `nas {' '.join(map(str, argv))}` failed:\n{done.stderr[-2000:]}")
        return done

    def start(self, *argv) -> subprocess.Popen:
        """A child whose stderr goes to a file (a pipe nobody reads could block it)."""
        self.stderr = (Path(self.args.out) / "child.err").open("w+")
        return subprocess.Popen([sys.executable, "-m", "nas", *map(str, argv)], env=self.env, text=True,
                                stdout=subprocess.DEVNULL, stderr=self.stderr)

    def wait_for(self, proc: subprocess.Popen, ready) -> bool:
        """Poll `ready()` until it holds (True) or the process ends first (False); bounded by --timeout."""
        deadline = time.monotonic() + self.args.timeout
        while time.monotonic() < deadline:
            if ready():
                return True
            if proc.poll() is not None:
                return False
            time.sleep(0.02)
        proc.kill()
        raise SystemExit("fault_inject: a child neither reached its kill point nor ended within --timeout")

    def hit(self, proc: subprocess.Popen, signum: int, within: float = 0.5) -> tuple[int | None, str]:
        """Send `signum` a random 0-`within` s later; (None, stderr) when the child had already ended (no fault)."""
        time.sleep(self.rng.uniform(0, within))
        missed = proc.poll() is not None
        if not missed:
            proc.send_signal(signum)
        try:
            proc.wait(timeout=self.args.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self.stderr.seek(0)
        return (None if missed else proc.returncode), self.stderr.read()

    def stopped_cleanly(self, kind: str, note: str, status: int, err: str, signum: int) -> bool:
        """After a SIGINT / SIGTERM: exit 128 + signum and one line, no traceback (else recorded as lost)."""
        if signum == signal.SIGKILL or (status == 128 + signum and self.ends_with_one_line(err, ": stopped by ")):
            return True
        self.record(kind, "lost", f"{note}: expected exit {128 + signum} and one line: {err.strip()[-200:]}")
        return False

    def record(self, kind: str, verdict: str, detail: str) -> None:
        self.rows.append((kind, verdict, detail))
        print(f"{kind:<28} {verdict:<18} {detail}", flush=True)

    # --- comparisons -------------------------------------------------------------------------------------
    @staticmethod
    def same_training(run: Path, ref: Path) -> str:
        """'' when `run` equals `ref` (final weights bit for bit, each logged step once with the same loss)."""
        state, ref_state = torch.load(run / "checkpoint.pt", weights_only=False), torch.load(ref / "checkpoint.pt",
                                                                                              weights_only=False)
        if state["model"].keys() != ref_state["model"].keys() or not all(
                torch.equal(state["model"][k], ref_state["model"][k]) for k in ref_state["model"]):
            return "final weights differ"
        steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        ref_steps = [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()]
        if [(s["step"], s["loss"]) for s in steps] != [(s["step"], s["loss"]) for s in ref_steps]:
            return "metrics.jsonl differs (a step twice, missing or with another loss)"
        return ""

    @staticmethod
    def same_search(run: Path, ref: Path) -> str:
        if (run / "best.yaml").read_text() != (ref / "best.yaml").read_text():
            return "best.yaml differs"
        def candidates(folder: Path) -> list:  # without the trial number: a retried trial gets a new one
            return sorted(tuple(row[1:]) for row in list(csv.reader(io.StringIO((folder / "candidates.csv")
                                                                                .read_text())))[1:])
        if candidates(run) != candidates(ref):
            return "candidates.csv differs"
        return ""

    @staticmethod
    def export_difference(run: Path, ref: Path) -> str:
        """'' when export folder `run` equals `ref`: the same files, meta.json apart from its creation time."""
        if not all((run / name).is_file() for name in EXPORT_FILES):
            return "files missing"
        _, mismatch, _ = filecmp.cmpfiles(run, ref, EXPORT_FILES[:2], shallow=False)
        meta, ref_meta = (json.loads((folder / "meta.json").read_text()) for folder in (run, ref))
        meta.pop("created", None), ref_meta.pop("created", None)
        return f"{', '.join(mismatch + ['meta.json'] * (meta != ref_meta))} differ" if mismatch or meta != ref_meta \
            else ""

    @staticmethod
    def ends_with_one_line(err: str, marker: str) -> bool:
        """No traceback, and the last line of stderr is the command's own `nas CMD: <marker> ...` line (progress
        lines before it are fine: they are stderr's job)."""
        lines = err.strip().splitlines()
        return "Traceback" not in err and bool(lines) and lines[-1].startswith("nas ") and marker in lines[-1]

    def one_line_refusal(self, done: subprocess.CompletedProcess) -> bool:
        return done.returncode == 2 and self.ends_with_one_line(done.stderr, ": error: ")

    def verdict(self, kind: str, rerun: subprocess.CompletedProcess, difference: str, note: str) -> None:
        if rerun.returncode:
            self.record(kind, "lost", f"{note}; the rerun failed: {(rerun.stderr.strip().splitlines() or [''])[-1]}")
        elif difference:
            self.record(kind, "silently wrong", f"{note}; {difference}")
        else:
            self.record(kind, "resumed identical", note)

    # --- the faults --------------------------------------------------------------------------------------
    def references(self, root: Path) -> tuple[Path, Path, Path, Path]:
        """Uninterrupted runs: a supernet, a search on it, the export of its best and of another arch."""
        train, search, model, old = root / "train", root / "search", root / "model", root / "other_model"
        if not (train / "final_eval.json").exists():
            self.nas(*TRAIN, "--out", train, check=True)
        if not (search / "best.yaml").exists():
            self.nas(*SEARCH, "--supernet", train / "checkpoint.pt", "--out", search, check=True)
        if not (model / "meta.json").exists():
            self.nas("export", "--supernet", train / "checkpoint.pt", "--arch", search / "best.yaml", "--out", model,
                     check=True)
        if not (old / "meta.json").exists():  # the complete older export that `export --force` replaces
            self.nas("sample", "--space", "tiny-32", "-n", "1", "--seed", "7", "--out", root / "other", check=True)
            self.nas("export", "--supernet", train / "checkpoint.pt", "--arch", next((root / "other").glob("*.yaml")),
                     "--out", old, check=True)
        return train, search, model, old

    def train_fault(self, ref: Path, out: Path, signum: int) -> None:
        kind = f"train {'kill -9' if signum == signal.SIGKILL else signal.Signals(signum).name}"
        total = len((ref / "metrics.jsonl").read_text().splitlines())
        k = self.rng.randint(1, total - 1)
        metrics = out / "metrics.jsonl"
        proc = self.start(*TRAIN, "--out", out)
        if not self.wait_for(proc, lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= k):
            self.record(kind, "lost", f"the run ended before step line {k}")
            return
        status, err = self.hit(proc, signum)
        if status is None:
            print(f"{kind:<28} (missed: the run ended before the signal; not counted)")
            return
        note = f"at log line {k}/{total}, exit {status}"
        if not self.stopped_cleanly(kind, note, status, err, signum):
            return
        resume = ["--resume"] if (out / "checkpoint.pt").exists() else []
        rerun = self.nas(*TRAIN, "--out", out, *resume)
        self.verdict(kind, rerun, "" if rerun.returncode else self.same_training(out, ref), note)

    def search_fault(self, supernet: Path, ref: Path, out: Path, signum: int) -> None:
        kind = f"search {'kill -9' if signum == signal.SIGKILL else signal.Signals(signum).name}"
        journal, k = out / "study.journal", self.rng.randint(1, 12)
        args = [*SEARCH, "--supernet", supernet, "--out", out]
        proc = self.start(*args)
        if not self.wait_for(proc, lambda: journal.exists() and len(TRIAL_STATE_RECORD.findall(journal.read_bytes()))
                             >= k):
            self.record(kind, "lost", f"the search ended before trial record {k}")
            return
        status, err = self.hit(proc, signum)
        if status is None:
            print(f"{kind:<28} (missed: the search ended before the signal; not counted)")
            return
        note = f"after {k} trial state records, exit {status}"
        if not self.stopped_cleanly(kind, note, status, err, signum):
            return
        if signum != signal.SIGKILL:
            if not (out / "best.yaml").exists():
                self.record(kind, "lost", f"{note}: no best.yaml written for the trials so far")
                return
        rerun = self.nas(*args)
        self.verdict(kind, rerun, "" if rerun.returncode else self.same_search(out, ref), note)

    def export_fault(self, supernet: Path, best: Path, ref: Path, old: Path, out: Path, signum: int) -> None:
        """Export `best` with --force over a copy of the complete export `old`, and hit it mid-way."""
        kind = f"export {'kill -9' if signum == signal.SIGKILL else signal.Signals(signum).name}"
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(old, out)
        args = ["export", "--supernet", supernet, "--arch", best, "--out", out, "--force"]
        if not hasattr(self, "export_seconds"):  # a whole export's time, to hit anywhere in its later part
            started = time.monotonic()
            self.nas(*args[:-3], "--out", out.parent / "timed_export", check=True)
            self.export_seconds = time.monotonic() - started
        proc = self.start(*args)
        started, delay = time.monotonic(), self.rng.uniform(0.6, 1.0) * self.export_seconds
        self.wait_for(proc, lambda: time.monotonic() > started + delay)
        status, err = self.hit(proc, signum, within=0.0)
        if status is None:
            print(f"{kind:<28} (missed: the export ended before the signal; not counted)")
            return
        note = f"{delay:.1f} s into the export (a whole one takes {self.export_seconds:.1f} s), exit {status}"
        if not self.stopped_cleanly(kind, note, status, err, signum):
            return
        if self.export_difference(out, ref) and self.export_difference(out, old):
            check = self.nas("eval", out)
            if check.returncode == 0:
                self.record(kind, "silently wrong", f"{note}; nas eval accepted a folder that is neither export")
                return
            if not self.one_line_refusal(check):
                self.record(kind, "lost", f"{note}; nas eval on the folder failed: {check.stderr.strip()[-200:]}")
                return
        rerun = self.nas(*args)
        self.verdict(kind, rerun, "" if rerun.returncode else self.export_difference(out, ref), note)

    def torn_journal(self, supernet: Path, ref: Path, out: Path) -> None:
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(ref, out)
        journal = out / "study.journal"
        data = journal.read_bytes()
        journal.write_bytes(data[:-100])
        args = [*SEARCH, "--supernet", supernet, "--out", out]
        refused = self.nas(*args)
        if refused.returncode == 0:
            self.record("torn journal", "silently wrong", "the search ran on a torn journal")
            return
        if not self.one_line_refusal(refused) or "--repair-journal" not in refused.stderr:
            self.record("torn journal", "lost", f"not one line offering --repair-journal: {refused.stderr[-300:]}")
            return
        if journal.read_bytes() != data[:-100]:
            self.record("torn journal", "silently wrong", "the refusing run changed the journal")
            return
        rerun = self.nas(*args, "--repair-journal")
        self.verdict("torn journal", rerun, "" if rerun.returncode else self.same_search(out, ref),
                     "refused in one line, then --repair-journal")

    def corrupted(self, kind: str, original: Path, copy: Path, argv: list) -> None:
        """Flip bytes in the middle of a copy of `original`; the command on it must refuse in one line."""
        copy.parent.mkdir(parents=True, exist_ok=True)
        if original.is_dir():
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(original, copy)
            target = copy / "model.safetensors"
        else:
            shutil.copy(original, copy)
            if (original.parent / "config.yaml").exists():  # so that only the damage can be the refusal's reason
                shutil.copy(original.parent / "config.yaml", copy.parent / "config.yaml")
            target = copy
        data = bytearray(target.read_bytes())
        middle = len(data) // 2
        data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
        target.write_bytes(bytes(data))
        done = self.nas(*argv)
        if done.returncode == 0:
            self.record(kind, "silently wrong", "exit 0 on a corrupted file")
        elif self.one_line_refusal(done):
            self.record(kind, "refused cleanly", done.stderr.strip()[:140])
        else:
            self.record(kind, "lost", f"exit {done.returncode}, not one line: {done.stderr.strip()[-200:]}")

    def run(self) -> int:
        root = Path(self.args.out)
        ref_train, ref_search, ref_model, old_model = self.references(root / "reference")
        supernet = ref_train / "checkpoint.pt"
        faults = root / "faults"
        shutil.rmtree(faults, ignore_errors=True)
        for i in range(self.args.train_kills):
            self.train_fault(ref_train, faults / f"train_kill{i}", signal.SIGKILL)
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.train_fault(ref_train, faults / f"train_{signum.name}", signum)
        for i in range(self.args.search_kills):
            self.search_fault(supernet, ref_search, faults / f"search_kill{i}", signal.SIGKILL)
        self.search_fault(supernet, ref_search, faults / "search_SIGINT", signal.SIGINT)
        for i in range(self.args.export_kills):
            self.export_fault(supernet, ref_search / "best.yaml", ref_model, old_model, faults / f"export_kill{i}",
                              signal.SIGKILL)
        self.export_fault(supernet, ref_search / "best.yaml", ref_model, old_model, faults / "export_SIGINT",
                          signal.SIGINT)
        self.torn_journal(supernet, ref_search, faults / "torn_journal")
        ckpt = faults / "corrupt_ckpt" / "checkpoint.pt"
        self.corrupted("corrupted checkpoint (resume)", supernet, ckpt, [*TRAIN, "--out", ckpt.parent, "--resume"])
        self.corrupted("corrupted checkpoint (evolve)", supernet, ckpt, [*SEARCH, "--supernet", ckpt, "--out",
                                                                         faults / "corrupt_search"])
        self.corrupted("corrupted safetensors (eval)", ref_model, faults / "corrupt_model",
                       ["eval", faults / "corrupt_model"])
        counts = {v: sum(row[1] == v for row in self.rows)
                  for v in ("resumed identical", "refused cleanly", "lost", "silently wrong")}
        print(f"{len(self.rows)} faults, {counts['resumed identical']} resumed identical, "
              f"{counts['refused cleanly']} refused cleanly, {counts['lost']} lost, "
              f"{counts['silently wrong']} silently wrong")
        return 1 if counts["lost"] or counts["silently wrong"] else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="work folder (the references are reused when present)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill points (default 0)")
    parser.add_argument("--train-kills", type=int, default=5, help="kill -9 points in training (default 5)")
    parser.add_argument("--search-kills", type=int, default=3, help="kill -9 points in a search (default 3)")
    parser.add_argument("--export-kills", type=int, default=3, help="kill -9 points in an export (default 3)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds any one command may take (default 900)")
    return Faults(parser.parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
