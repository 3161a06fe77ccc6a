"""The one-way import rule of ``biomed/`` and ``apps/`` (DESIGN.md, "Dependencies point down"),
checked on the source with `ast`: every ``import`` and ``from ... import`` statement, at the top
of a module or inside a function, relative or absolute, and every
``importlib.import_module("biomed...")`` with a literal name.

The rule is the table `UNITS`: each unit is a set of modules and names the units directly below
it; a unit may import itself and everything below it (the closure), nothing else. On top of the
table: no import cycle between modules or between packages, only the orchestrators import
another unit's ``train`` module, and every internal import names a module or a top-level name that
exists (an import inside a function runs only when that function does, so no other test may see
a stale one).
"""

from __future__ import annotations

import ast
import functools
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("biomed", "apps")  # the top-level packages checked (apps/ when it exists)

# unit: (its modules, the units directly below it). A module belongs to the unit with the longest
# matching prefix ("biomed.lm" holds biomed.lm and biomed.lm.*); `PACKAGE_ONLY` prefixes hold only
# the package's own __init__. Top to bottom:
#   cli -> apps, quickstart -> augment -> pretrained -> diffusion -> {classifier, clip} -> phantom
#   -> data -> {dicom, reports} -> core -> base; lm beside imaging (diffusion and pretrained use
#   it; it uses no imaging).
UNITS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "cli": (("biomed.cli", "biomed.__main__", "biomed.app_command"), ("apps", "quickstart")),
    "apps": (("apps",), ("augment",)),
    "quickstart": (("biomed.quickstart", "biomed.quickstart_report"), ("augment",)),
    "augment": (("biomed.augment",), ("pretrained",)),
    # loads every saved model for inference (classifier, CLIP, pipeline, LM)
    "pretrained": (("biomed.pretrained",), ("diffusion", "lm")),
    "diffusion": (("biomed.imaging.diffusion",), ("classifier", "clip", "lm")),
    "classifier": (("biomed.imaging.classifier",), ("phantom",)),
    "clip": (("biomed.imaging.clip",), ("phantom",)),
    "phantom": (("biomed.imaging.phantom",), ("data",)),
    "data": (("biomed.imaging.data",), ("dicom", "reports")),
    "dicom": (("biomed.imaging.dicom",), ("core",)),
    "reports": (("biomed.imaging.reports",), ("core",)),
    "core": (("biomed.imaging.core", "biomed.imaging"), ("base",)),
    "lm": (("biomed.lm",), ("base",)),
    "base": (("biomed", "biomed.engine", "biomed.sources", "biomed.stats", "biomed.runs",
              "biomed.errors", "biomed.config", "biomed.hydra_app", "biomed.outpaths",
              "biomed.splits", "biomed.locks"), ()),
}
PACKAGE_ONLY = {"biomed", "biomed.imaging"}  # their sub-modules each belong to a unit above
# Sibling arrows the table allows besides its own: a model package loads the other's saved
# model (through its `model` module: the train rule below forbids the rest).
SIDEWAYS = {("classifier", "clip"), ("clip", "classifier")}
# The only units that may import another unit's `train` module.
TRAIN_IMPORTERS = {"cli", "quickstart", "augment"}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (the deepest one the statement names)
    file: str  # path relative to the repository root
    line: int
    name: str | None = None  # `from target import name`, when name is not a module itself

    def where(self) -> str:
        return f"{self.file}:{self.line}"


# ---------------------------------------------------------------------------------------------
# reading the source


def _module_files() -> dict[str, Path]:
    """Module name -> file, for every .py under the checked packages."""
    files = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")) if (ROOT / pkg).is_dir() else []:
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join(parts)] = path
    return files


def _package_of(module: str, path: Path) -> str:
    """The package a relative import in ``module`` starts from."""
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _internal(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def _literal_import(node: ast.Call) -> str | None:
    """The module of ``importlib.import_module("x")`` / ``import_module("x")`` /
    ``__import__("x")`` with a literal first argument, else None."""
    f = node.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
    if name in ("import_module", "__import__") and node.args and isinstance(
            node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
        return node.args[0].value
    return None


@functools.cache
def _read() -> tuple[dict[str, Path], tuple[Import, ...], tuple[str, ...]]:
    """(module files, every internal import, the files that do not parse)."""
    files = _module_files()
    imports, broken = [], []
    for module, path in files.items():
        rel = path.relative_to(ROOT).as_posix()
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
        except SyntaxError as e:
            broken.append(f"{rel}:{e.lineno}: {e.msg}")
            continue
        for node in ast.walk(tree):
            found: list[tuple[str, str | None]] = []
            if isinstance(node, ast.Import):
                found = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = _package_of(module, path).split(".")
                    pkg = pkg[:len(pkg) - (node.level - 1)]
                    base = ".".join([*pkg, *([node.module] if node.module else [])])
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    found.append((sub, None) if sub in files else (base, a.name))
            elif isinstance(node, ast.Call) and (target := _literal_import(node)):
                found = [(target, None)]
            imports += [Import(module, t, rel, node.lineno, n) for t, n in found if _internal(t)]
    return files, tuple(imports), tuple(broken)


# ---------------------------------------------------------------------------------------------
# the table


def unit_of(module: str) -> str | None:
    best, best_len = None, -1
    for unit, (prefixes, _) in UNITS.items():
        for p in prefixes:
            hit = module == p or (p not in PACKAGE_ONLY and module.startswith(p + "."))
            if hit and len(p) > best_len:
                best, best_len = unit, len(p)
    return best


@functools.cache
def allowed(unit: str) -> frozenset[str]:
    """The units ``unit`` may import: itself, the closure of the units below it, and its
    sideways arrows."""
    out = {unit}
    for below in UNITS[unit][1]:
        out |= allowed(below)
    return frozenset(out | {b for a, b in SIDEWAYS if a == unit})


def is_train(module: str) -> bool:
    return "train" in module.split(".")


# ---------------------------------------------------------------------------------------------
# the checks (each returns its failure lines; the tests assert they are empty)


def unmapped_modules() -> list[str]:
    files, _, _ = _read()
    return [f"{p.relative_to(ROOT)}: module {m} is in no unit of UNITS (add it to the table)"
            for m, p in files.items() if unit_of(m) is None]


def arrow_violations() -> list[str]:
    _, imports, _ = _read()
    out = []
    for imp in imports:
        src, dst = unit_of(imp.source), unit_of(imp.target)
        if src is None or dst is None or dst in allowed(src):
            continue
        below = ", ".join(sorted(allowed(src) - {src})) or "nothing"
        out.append(f"{imp.where()}: {imp.source} imports {imp.target}: the arrow {src} -> {dst} "
                   f"breaks the rule ({src} may import: {below})")
    return out


def train_violations() -> list[str]:
    _, imports, _ = _read()
    out = []
    for imp in imports:
        src, dst = unit_of(imp.source), unit_of(imp.target)
        if is_train(imp.target) and src != dst and src not in TRAIN_IMPORTERS:
            out.append(f"{imp.where()}: {imp.source} imports {imp.target}: the arrow {src} -> "
                       f"{dst}.train breaks the rule (only {', '.join(sorted(TRAIN_IMPORTERS))} "
                       f"import another unit's train; load saved models through `model`)")
    return out


def _cycles(edges: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each as a cycle path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    paths = []
    for comp in comps:  # one concrete cycle through the component's first node
        members, start = set(comp), min(comp)
        prev: dict[str, str] = {}
        frontier, seen = [start], {start}
        while frontier and start not in prev:
            nxt = []
            for v in frontier:
                for w in sorted(edges.get(v, {})):
                    if w in members and w == start and start not in prev:
                        prev[start] = v
                    elif w in members and w not in seen:
                        seen.add(w)
                        prev[w] = v
                        nxt.append(w)
            frontier = nxt
        path, v = [start], prev[start]
        while v != start:
            path.append(v)
            v = prev[v]
        paths.append([start, *reversed(path[1:]), start])
    return paths


def _describe(path: list[str], edges: dict[str, dict[str, Import]]) -> str:
    return "; ".join(f"{a} -> {b} ({edges[a][b].where()})"
                     for a, b in zip(path, path[1:], strict=False))


def module_cycles() -> list[str]:
    files, imports, _ = _read()
    edges: dict[str, dict[str, Import]] = defaultdict(dict)
    for imp in imports:
        if imp.target in files and imp.target != imp.source:
            edges[imp.source].setdefault(imp.target, imp)
    return [f"import cycle between modules: {_describe(p, edges)}" for p in _cycles(edges)]


def package_cycles() -> list[str]:
    """Cycles between packages (a module's package: its folder), leaving out the arrows between
    a package and the packages inside it (a package may use its sub-packages and they it).

    The modules of the top unit, ``cli`` (the dispatcher and ``biomed app``, which starts the
    ``apps`` package above ``biomed``), count as a package of their own: they live in the
    ``biomed/`` folder by convenience, above everything else, and nothing may import them
    (`arrow_violations`), so no cycle can pass through them."""
    files, imports, _ = _read()

    def package(m: str) -> str:
        if unit_of(m) == "cli":
            return m
        return _package_of(m, files[m]) if m in files else m.rpartition(".")[0]

    def nested(a: str, b: str) -> bool:
        return a == b or a.startswith(b + ".") or b.startswith(a + ".")

    edges: dict[str, dict[str, Import]] = defaultdict(dict)
    for imp in imports:
        a, b = package(imp.source), package(imp.target)
        if not nested(a, b):
            edges[a].setdefault(b, imp)
    return [f"import cycle between packages: {_describe(p, edges)}" for p in _cycles(edges)]


def _top_level_names(path: Path) -> set[str] | None:
    """Names bound at a module's top level (None: it star-imports, so anything may be there)."""
    names: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                if a.name == "*":
                    return None
                names.add(a.asname or a.name.split(".")[0])
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.If, ast.Try, ast.With)):  # `if TYPE_CHECKING:`, try/except
            todo += [*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", []),
                     *(s for h in getattr(node, "handlers", []) for s in h.body)]
    return names


def unresolved_imports() -> list[str]:
    files, imports, _ = _read()
    names = {m: _top_level_names(p) for m, p in files.items()}
    out = []
    for imp in imports:
        if imp.target not in files:
            out.append(f"{imp.where()}: {imp.source} imports {imp.target}, which does not exist")
        elif imp.name is not None and names[imp.target] is not None and \
                imp.name not in names[imp.target]:
            out.append(f"{imp.where()}: {imp.source} imports {imp.name} from {imp.target}, "
                       f"which defines no such name")
    return out


# ---------------------------------------------------------------------------------------------
# tests


def _check(lines: list[str]) -> None:
    assert not lines, f"{len(lines)} problem(s):\n" + "\n".join(lines)


def test_the_table_is_a_one_way_stack():
    for unit, (_, below) in UNITS.items():
        assert set(below) <= set(UNITS), (unit, below)
        for other in allowed(unit) - {unit}:
            assert unit not in allowed(other) or {(unit, other), (other, unit)} <= SIDEWAYS, \
                f"{unit} and {other} are each below the other"
    assert "lm" not in allowed("core") | allowed("classifier") | allowed("clip")
    assert not allowed("lm") & {"core", "dicom", "reports", "data", "phantom"}


def test_every_file_parses_and_belongs_to_a_unit():
    _, _, broken = _read()
    _check([f"does not parse: {b}" for b in broken] + unmapped_modules())


def test_imports_point_down():
    _check(arrow_violations())


def test_only_the_orchestrators_import_train_modules():
    _check(train_violations())


def test_no_import_cycles():
    _check(module_cycles() + package_cycles())


def test_every_internal_import_resolves():
    _check(unresolved_imports())


def test_the_checker_sees_every_kind_of_import(tmp_path, monkeypatch):
    """A fake tree with each kind of import that breaks a rule: every one is caught, with its
    file and line."""
    for d in ("biomed/lm", "biomed/imaging/core", "biomed/imaging/clip",
              "biomed/imaging/classifier"):
        (tmp_path / d).mkdir(parents=True)
        (tmp_path / d / "__init__.py").write_text("")
    (tmp_path / "biomed/__init__.py").write_text("")
    (tmp_path / "biomed/imaging/__init__.py").write_text("")
    (tmp_path / "biomed/lm/model.py").write_text(
        "def f():\n    from biomed.imaging.core import labels\n")  # in a function
    (tmp_path / "biomed/imaging/core/labels.py").write_text(
        "from ..clip import model\nX = 1\n")  # relative, upward
    (tmp_path / "biomed/imaging/clip/model.py").write_text(
        "from biomed.imaging.core.labels import X\n")
    (tmp_path / "biomed/imaging/clip/train.py").write_text("")
    (tmp_path / "biomed/imaging/classifier/predict.py").write_text(
        "import importlib\n\n\ndef g():\n"
        "    return importlib.import_module('biomed.imaging.clip.train')\n"
        "from biomed.imaging.clip.model import nothing_here\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    _read.cache_clear()
    try:
        arrows, train = arrow_violations(), train_violations()
        cycles, unresolved = module_cycles() + package_cycles(), unresolved_imports()
    finally:
        _read.cache_clear()
    assert any(a.startswith("biomed/lm/model.py:2: ") and "lm -> core" in a for a in arrows)
    assert any(a.startswith("biomed/imaging/core/labels.py:1: ") and "core -> clip" in a
               for a in arrows)
    assert train == [t for t in train if "classifier/predict.py:5: " in t] and len(train) == 1
    assert "classifier -> clip.train" in train[0]
    assert any("biomed.imaging.core.labels -> biomed.imaging.clip.model" in c for c in cycles)
    assert len(unresolved) == 1 and "nothing_here" in unresolved[0]
