"""The shape of the code: no module imports one that imports it back (lazy imports included), and each package
of nas/ imports only the packages below it (docs/design.md section 6)."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
import_graph = importlib.util.module_from_spec(spec)
spec.loader.exec_module(import_graph)

# What each layer may import, besides the base modules (nas/*.py) and search_spaces/ and supernets/.
ALLOWED = {
    "nas.data": set(),
    "nas.train": {"nas.data", "nas.export.exported_model"},  # retrain writes its model as an export folder
    "nas.search": {"nas.data", "nas.train"},
    "nas.export": {"nas.data", "nas.train", "nas.search"},
}


def test_the_cycle_finder_finds_a_cycle():
    assert import_graph.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_graph.cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_one_that_imports_it_back():
    assert import_graph.cycles(import_graph.import_graph()) == []


def subpackage(module: str) -> str | None:
    """'nas.train' for nas.train.loop; None for a base module (nas.units) and outside nas/."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "nas" and len(parts) > 1 and (ROOT / "nas" / parts[1]).is_dir() \
        else None


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_a_package_imports_only_the_packages_below_it(layer):
    graph = import_graph.import_graph()
    wrong = set()
    for module, targets in graph.items():
        if not module.startswith(layer + "."):
            continue
        for target in targets:
            package = subpackage(target)
            if package not in (None, layer) and package not in ALLOWED[layer] and target not in ALLOWED[layer]:
                wrong.add(f"{module} -> {target}")
    assert not wrong, sorted(wrong)


def test_the_base_modules_import_no_package_of_nas():
    graph = import_graph.import_graph()
    base = [m for m in graph if m.startswith("nas.") and subpackage(m) is None and m not in ("nas.cli", "nas.__main__")]
    assert "nas.units" in base and "nas.cost_model" in base
    wrong = {f"{m} -> {t}" for m in base for t in graph[m] if subpackage(t) is not None}
    assert not wrong, sorted(wrong)
