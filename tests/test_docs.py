"""Every dotted `jaxstep.` name in the package's docstrings and in README.md names a
real module or object, and the layers import only downwards."""
import ast
import importlib
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NAME = re.compile(r"\bjaxstep(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


def _resolve(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def _docstrings(path: pathlib.Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                yield getattr(node, "name", "<module>"), doc


def _names():
    found = []
    for path in sorted((ROOT / "jaxstep").rglob("*.py")):
        for where, doc in _docstrings(path):
            for name in NAME.findall(doc):
                found.append((f"{path.relative_to(ROOT)}:{where}", name.rstrip(".")))
    for line_no, line in enumerate((ROOT / "README.md").read_text(encoding="utf-8").splitlines(), 1):
        for name in NAME.findall(line):
            found.append((f"README.md:{line_no}", name.rstrip(".")))
    return found


def test_dotted_names_in_docstrings_and_readme_resolve():
    names = _names()
    assert len(names) > 30  # the scan found the docstrings
    unresolved = sorted({f"{where}: {name}" for where, name in names if not _resolve(name)})
    assert not unresolved, "names that do not exist:\n" + "\n".join(unresolved)


# Lower layers never import higher ones: a library module imports no stage, and
# nothing below the stages imports `jaxstep.stages` or `jaxstep.main`.
LIBRARIES = ("data", "models", "parallel", "rewards", "rl", "rm", "evaluation", "reports", "train")


@pytest.mark.parametrize("package", LIBRARIES)
def test_libraries_import_no_stage(package):
    bad = []
    for path in sorted((ROOT / "jaxstep" / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and (
                    node.module.startswith("jaxstep.stages") or node.module == "jaxstep.main"
                    or (node.module == "jaxstep" and any(a.name in ("stages", "main") for a in node.names))):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}")
    assert not bad, "\n".join(bad)


def test_data_and_models_do_not_import_rl_or_training():
    """`data` is the bottom layer; `models` sits on it (no `rl`, no training code)."""
    bad = []
    for package, forbidden in (("data", ("jaxstep.models", "jaxstep.rl", "jaxstep.rewards", "jaxstep.train")),
                               ("models", ("jaxstep.rl", "jaxstep.rewards", "jaxstep.train", "jaxstep.rm"))):
        for path in sorted((ROOT / "jaxstep" / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(forbidden):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}")
    assert not bad, "\n".join(bad)
