"""The light commands start without torch and timm; `import nas` still registers "nas_vit" with timm whichever
comes first; a reader that closes stdout early ends the command quietly."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "timm", "optuna", "matplotlib")


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def arch_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("archs")
    result = python(f"import nas.cli; nas.cli.main(['sample', '--space', 'tiny-32', '--out', {str(out)!r}])")
    assert result.returncode == 0, result.stderr
    return out / "arch_000.yaml"


@pytest.mark.parametrize("argv", [["--help"], ["space", "tiny-32"], ["space", "unified-224", "--json"],
                                  ["sample", "--space", "tiny-32", "-n", "3", "--out", "{tmp}"],
                                  ["sample", "--space", "tiny-32", "--extreme", "largest", "--out", "{tmp}"],
                                  ["flops", "{arch}"], ["evolve", "--help"], ["train-supernet", "--help"]])
def test_light_commands_import_neither_torch_nor_timm(argv, arch_file, tmp_path):
    argv = [a.format(tmp=tmp_path, arch=arch_file) for a in argv]
    result = python(f"import sys, nas.cli\nstatus = nas.cli.main({argv!r})\n"
                    f"print(status, sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[-1] == "0 []"


@pytest.mark.parametrize("order", ["import nas; import timm", "import timm; import nas",
                                   "import nas; from timm.models import create_model"])
def test_nas_vit_is_registered_whichever_is_imported_first(order, arch_file):
    result = python(f"{order}\nimport sys, timm\nassert 'torch' not in sys.modules or 'timm' in sys.modules\n"
                    f"model = timm.create_model('nas_vit', arch={str(arch_file)!r}, num_classes=7)\n"
                    "print(type(model).__name__, model.num_classes)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["NasViT", "7"]


def test_importing_nas_alone_stays_light():
    result = python("import sys, nas\nprint(sorted(m for m in ('torch', 'timm') if m in sys.modules))")
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


@pytest.mark.parametrize("output", ["--json", "--table"])
def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path, output):
    """More output than a pipe holds, of which one line is read: no traceback, no 'Exception ignored', status 1
    (the output was cut short) or 0 (rich wrote its table whole before the reader went), never a signal's death."""
    argv = ["sample", "--space", "tiny-32", "-n", "1500", "--out", str(tmp_path)] + (["--json"] if output == "--json"
                                                                                    else [])
    process = subprocess.Popen([sys.executable, "-m", "nas", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    assert process.stdout.readline()
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=600) in ((1,) if output == "--json" else (0, 1))
    assert all(word not in stderr for word in ("Traceback", "Exception", "BrokenPipe", "error"))
    assert stderr in ("", f"next: nas flops {tmp_path / 'arch_0000.yaml'}\n")  # the hint, when nothing was cut
