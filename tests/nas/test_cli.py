"""The `nas` CLI: space, sample and flops, in-process through `main`, plus one run of the console script."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nas.cli import main
from nas.cost_model import arch_cost, extreme_arch, space_cost_range
from nas.units import human
from search_spaces import load_arch, load_space


def run_json(capsys, *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # stdout must hold nothing but the JSON


def run_error(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err
    return lines[0]


@pytest.fixture
def arch_file(tmp_path, capsys) -> Path:
    assert main(["sample", "--space", "tiny-32", "-n", "1", "--seed", "3", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    return tmp_path / "arch_000.yaml"


@pytest.mark.parametrize("name", ["tiny-32", "unified-224"])
def test_space_json_matches_the_space(capsys, name):
    space = load_space(name)
    out = run_json(capsys, "space", name)
    assert out["size"] == space.size
    assert {k: out[k] for k in space_cost_range(space)} == space_cost_range(space)
    assert (out["name"], out["img_size"], out["num_classes"]) == (name, space.img_size, space.num_classes)
    assert [s["dim"] for s in out["stages"]] == [list(s.dim) for s in space.stages]


def test_space_table_shows_genes_and_ranges(capsys):
    assert main(["space", "tiny-32"]) == 0
    out = capsys.readouterr().out
    top = human(space_cost_range(load_space("tiny-32"))["max_macs"])
    for text in ("stage 4", "mlp_ratio", "regions", f"{load_space('tiny-32').size:,}", top):
        assert text in out


def test_space_table_marks_genes_no_operator_of_a_stage_reads(capsys):
    assert main(["space", "tiny-32"]) == 0
    assert "window" not in capsys.readouterr().out  # tiny-32 has no ipsa, cpsa or cross
    assert main(["space", "unified-224"]) == 0
    window = next(line for line in capsys.readouterr().out.splitlines() if "window" in line)
    assert [cell.strip() for cell in window.strip("│ ").split("│")][1:] == ["7", "7", "7", "-"]  # stage 4: no ipsa


def test_sample_writes_distinct_valid_reproducible_archs(tmp_path, capsys):
    out = run_json(capsys, "sample", "--space", "tiny-32", "-n", "5", "--seed", "7", "--out", str(tmp_path / "a"))
    files = sorted((tmp_path / "a").glob("*.yaml"))
    assert [f.name for f in files] == [f"arch_{i:03d}.yaml" for i in range(5)]
    hashes = []
    for row, path in zip(out["archs"], files):
        arch, space = load_arch(path)
        assert row["hash"] == arch.hash and (row["macs"], row["params"]) == arch_cost(arch, space)
        hashes.append(arch.hash)
    assert len(set(hashes)) == 5
    again = run_json(capsys, "sample", "--space", "tiny-32", "-n", "5", "--seed", "7", "--out", str(tmp_path / "b"))
    assert [r["hash"] for r in again["archs"]] == hashes
    other = run_json(capsys, "sample", "--space", "tiny-32", "-n", "5", "--seed", "8", "--out", str(tmp_path / "c"))
    assert [r["hash"] for r in other["archs"]] != hashes


@pytest.mark.parametrize("extreme", ["largest", "smallest"])
def test_sample_extreme_writes_the_space_s_largest_and_smallest_arch(tmp_path, capsys, extreme):
    out = run_json(capsys, "sample", "--space", "tiny-32", "--extreme", extreme, "--out", str(tmp_path))
    space = load_space("tiny-32")
    arch, _ = load_arch(tmp_path / f"{extreme}.yaml")
    assert arch == extreme_arch(space, largest=extreme == "largest")
    bound = {"largest": "max_macs", "smallest": "min_macs"}[extreme]
    assert [row["macs"] for row in out["archs"]] == [space_cost_range(space)[bound]]


def test_sample_extreme_takes_one_arch(tmp_path, capsys):
    line = run_error(capsys, "sample", "--space", "tiny-32", "--extreme", "largest", "-n", "2", "--out", str(tmp_path))
    assert line == "nas sample: error: -n 2: --extreme writes one arch"


def test_results_on_stdout_the_next_step_on_stderr(tmp_path, capsys):
    assert main(["sample", "--space", "tiny-32", "-n", "2", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "arch_000.yaml" in captured.out and captured.err == f"next: nas flops {tmp_path / 'arch_000.yaml'}\n"
    assert main(["space", "tiny-32"]) == 0
    assert capsys.readouterr().err == "next: nas sample --space tiny-32 -n 8 --out archs/\n"


def test_sample_table(tmp_path, capsys):
    assert main(["sample", "--space", "tiny-32", "-n", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "arch_001.yaml" in out and "MACs" in out


def test_flops_json_matches_cost_model(arch_file, capsys):
    arch, space = load_arch(arch_file)
    out = run_json(capsys, "flops", str(arch_file))
    assert (out["macs"], out["params"]) == arch_cost(arch, space)
    assert out["arch_hash"] == arch.hash and out["space"] == "tiny-32"
    assert [p["name"] for p in out["parts"]] == ["stem", "stage 1", "stage 2", "stage 3", "stage 4", "head"]
    assert sum(p["macs"] for p in out["parts"]) == out["macs"]
    assert sum(p["params"] for p in out["parts"]) == out["params"]
    assert [p["side"] for p in out["parts"][1:5]] == space.stage_sizes(arch)


def test_flops_table(arch_file, capsys):
    assert main(["flops", str(arch_file), "--space", "tiny-32"]) == 0
    out = capsys.readouterr().out
    assert "stage 4" in out and "total" in out


def test_unknown_space(capsys):
    line = run_error(capsys, "space", "no-such-space")
    assert line.startswith("nas space: error: ") and "tiny-32" in line


def test_missing_arch_file(tmp_path, capsys):
    line = run_error(capsys, "flops", str(tmp_path / "missing.yaml"))
    assert line.startswith("nas flops: error: ") and "missing.yaml" in line


def test_malformed_yaml(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("space: [tiny-32\nstages: {\n")
    line = run_error(capsys, "flops", str(path))
    assert line.startswith("nas flops: error: ") and "not valid YAML" in line


def test_out_of_space_gene(arch_file, capsys):
    data = yaml.safe_load(arch_file.read_text())
    data["stages"][0]["dim"] = 17
    arch_file.write_text(yaml.safe_dump(data))
    line = run_error(capsys, "flops", str(arch_file))
    assert line.startswith("nas flops: error: ")
    assert "stage 1" in line and "'dim' = 17" in line and "[16, 32]" in line


@pytest.mark.parametrize("num", ["0", "-3", "x"])
def test_sample_rejects_bad_n(tmp_path, capsys, num):
    line = run_error(capsys, "sample", "--space", "tiny-32", "-n", num, "--out", str(tmp_path))
    assert line.startswith("nas sample: error: ") and "-n" in line
    assert not any(tmp_path.iterdir())


def test_sample_out_is_a_file(tmp_path, capsys):
    (tmp_path / "f").touch()
    line = run_error(capsys, "sample", "--space", "tiny-32", "--out", str(tmp_path / "f"))
    assert line.startswith("nas sample: error: ")


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in ("space", "sample", "flops"))
    for cmd in ("space", "sample", "flops"):
        assert main([cmd, "--help"]) == 0
        assert "example:" in capsys.readouterr().out


def test_console_script_exits_2_without_traceback(tmp_path):
    script = shutil.which("nas") or str(Path(sys.executable).parent / "nas")
    result = subprocess.run([script, "flops", str(tmp_path / "missing.yaml")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("nas flops: error: ") and "Traceback" not in result.stderr
