"""A small AST mutation check: does the fast test suite notice when an operator or a constant changes?

Each mutant changes one node of one target file (arithmetic / comparison / boolean operator, ``not``, a unary
minus, an augmented assignment, a numeric or boolean constant), in a copy of the repository; the target's test
files then run in a long-lived process (torch, numpy, ... stay imported; the project's own modules are dropped
and re-imported for every mutant). A mutant is *killed* when a test fails or errors, *survives* when all pass,
and counts as killed on *timeout* (a mutant that loops). Results go to a Markdown report.

    PYTHONPATH=$PWD python scripts/mutation_check.py --budget 1500 --out docs/testing/mutation-report.md
    PYTHONPATH=$PWD python scripts/mutation_check.py --only server/validation.py --list   # the mutants, no run

Nothing here is a benchmark; timings in the report only say how long the check took.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import itertools
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGETS: dict[str, list[str]] = {  # file -> the fast tests that cover it (pytest arguments, paths from the root)
    "shared_models/metrics.py": ["tests/test_metrics.py"],
    "shared_models/losses.py": ["tests/test_losses.py"],
    "server/aggregation.py": ["tests/test_aggregation.py", "tests/test_robust.py", "-k", "not laterals"],
    "server/validation.py": ["tests/test_validation.py", "tests/test_robust.py",
                             "tests/test_server_parts.py::test_update_validation"],
    "shared_models/wire.py": ["tests/test_wire.py", "-k", "not model_message"],
    "shared_models/npy.py": ["tests/test_wire.py", "-k", "not model_message"],
}
PACKAGES = ("shared_models", "server", "client", "tests", "dashboards")  # copied, and dropped between mutants

BINOP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
         ast.Pow: ast.Mult, ast.Mod: ast.FloorDiv}
CMPOP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
         ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
BOOLOP = {ast.And: ast.Or, ast.Or: ast.And}


@dataclass
class Mutant:
    file: str
    index: int  # the index-th mutable node of the file, in ast.walk order
    line: int
    what: str  # "a + b -> a - b"
    status: str = ""
    detail: str = ""


def _docstring_ids(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _annotation_ids(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        ann = getattr(node, "annotation", None) or getattr(node, "returns", None)
        if ann is not None:
            out.update(id(n) for n in ast.walk(ann))
    return out


def _mutation(node: ast.AST) -> tuple[str, callable] | None:
    """(description, apply) for one node, or None when the node is not mutated."""
    if isinstance(node, ast.BinOp) and type(node.op) in BINOP:
        new = BINOP[type(node.op)]
        return f"{type(node.op).__name__} -> {new.__name__}", lambda n: setattr(n, "op", new())
    if isinstance(node, ast.AugAssign) and type(node.op) in BINOP:
        new = BINOP[type(node.op)]
        return f"{type(node.op).__name__}= -> {new.__name__}=", lambda n: setattr(n, "op", new())
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in CMPOP:
        new = CMPOP[type(node.ops[0])]
        return f"{type(node.ops[0]).__name__} -> {new.__name__}", lambda n: setattr(n, "ops", [new()])
    if isinstance(node, ast.BoolOp):
        new = BOOLOP[type(node.op)]
        return f"{type(node.op).__name__} -> {new.__name__}", lambda n: setattr(n, "op", new())
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
        return f"drop {type(node.op).__name__}", "unwrap"
    if isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
        v = node.value
        if isinstance(v, bool):
            new = not v
        elif v == 0:
            new = type(v)(1)
        elif v == 1:
            new = type(v)(0) if isinstance(v, int) else 2.0
        else:
            new = v + 1 if isinstance(v, int) else v * 2
        return f"{v!r} -> {new!r}", lambda n: setattr(n, "value", new)
    return None


def _candidates(tree: ast.AST) -> list[tuple[ast.AST, str, object]]:
    skip = _docstring_ids(tree) | _annotation_ids(tree)
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        m = _mutation(node)
        if m is not None:
            out.append((node, *m))
    return out


def mutants(file: str) -> list[Mutant]:
    tree = ast.parse((REPO / file).read_text())
    return [Mutant(file, i, getattr(n, "lineno", 0), what) for i, (n, what, _) in enumerate(_candidates(tree))]


class _Unwrap(ast.NodeTransformer):
    def __init__(self, target: ast.AST) -> None:
        self.target = target

    def generic_visit(self, node):
        node = super().generic_visit(node)
        return node.operand if node is self.target else node


def mutated_source(file: str, index: int) -> str:
    tree = ast.parse((REPO / file).read_text())
    node, _, apply = _candidates(tree)[index]
    if apply == "unwrap":
        tree = _Unwrap(node).visit(tree)
    else:
        apply(node)
    return ast.unparse(ast.fix_missing_locations(tree))


class _Timeout(Exception):
    pass


def _drop_project_modules(root: Path) -> None:
    """Forget every module of the copy (test modules are imported by their bare names, e.g. ``test_losses``)."""
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in PACKAGES or str(getattr(module, "__file__", None) or "").startswith(str(root)):
            del sys.modules[name]


def run_tests(root: Path, tests: list[str], timeout: float) -> tuple[str, str]:
    """(status, detail) of the test files in ``root``: passed / failed / timeout, and the first failure line."""
    import pytest

    _drop_project_modules(root)
    out = io.StringIO()

    fired = []

    def alarm(*_):
        fired.append(True)
        raise _Timeout()

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = pytest.main(["-x", "-q", "-p", "no:cacheprovider", "-m", "not e2e", "--rootdir", str(root),
                                *[str(root / t) if t.startswith("tests/") else t for t in tests]])
    except _Timeout:
        return "timeout", f"over {timeout:.0f} s"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    text = out.getvalue()
    if fired:  # the alarm went off inside a test: pytest reports that test as failed, but it is a timeout
        return "timeout", f"over {timeout:.0f} s (a test was interrupted)"
    if code == 0:
        return "passed", ""
    failed = next((line for line in text.splitlines() if line.startswith("FAILED") or line.startswith("ERROR")), "")
    return "failed", failed[:200]


def copy_repo(dest: Path) -> None:
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml",):
        shutil.copy(REPO / f, dest / f)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", help="a target file (repeatable); default: every TARGETS file")
    ap.add_argument("--budget", type=float, default=1800.0, help="seconds for the whole check")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per mutant's test run")
    ap.add_argument("--out", type=Path, help="write the Markdown report here")
    ap.add_argument("--list", action="store_true", help="list the mutants and stop")
    ap.add_argument("--mutant", action="append", metavar="FILE:INDEX",
                    help="run only this mutant (repeatable; the index --list prints after #)")
    args = ap.parse_args(argv)
    files = args.only or list(TARGETS)
    per_file = [mutants(f) for f in files]
    # round robin over the files, so that a budget cut leaves every file a share of the mutants run
    todo = [m for group in itertools.zip_longest(*per_file) for m in group if m is not None]
    if args.mutant:
        wanted = {(f, int(i)) for f, _, i in (m.rpartition(":") for m in args.mutant)}
        todo = [m for m in todo if (m.file, m.index) in wanted]
        files = sorted({m.file for m in todo})
    if args.list:
        for m in todo:
            print(f"{m.file}:{m.line} #{m.index} {m.what}")
        return 0
    t0 = time.monotonic()
    sys.dont_write_bytecode = True  # a mutant is often the same size as the original: a cached .pyc would win
    with tempfile.TemporaryDirectory(prefix="fedchest-mutants-") as tmp:
        root = Path(tmp)
        copy_repo(root)
        sys.path.insert(0, str(root))
        os.chdir(root)
        for f in files:  # the unmutated copy must pass, or every mutant would look killed
            status, detail = run_tests(root, TARGETS[f], args.timeout * 3)
            if status != "passed":
                print(f"{f}: its tests fail without any mutation: {detail}", file=sys.stderr)
                return 2
        for i, m in enumerate(todo):
            if time.monotonic() - t0 > args.budget:
                m.status = "not run (budget)"
                continue
            original = (REPO / m.file).read_text()
            (root / m.file).write_text(mutated_source(m.file, m.index))
            try:
                status, m.detail = run_tests(root, TARGETS[m.file], args.timeout)
            finally:
                (root / m.file).write_text(original)
            m.status = {"passed": "survived", "failed": "killed", "timeout": "killed (timeout)"}[status]
            print(f"[{i + 1}/{len(todo)}] {m.file}:{m.line} {m.what}: {m.status}", flush=True)
    report = render(todo, files, time.monotonic() - t0)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    print(report)
    return 0


def render(todo: list[Mutant], files: list[str], seconds: float) -> str:
    lines = ["# Mutation check", "",
             f"`scripts/mutation_check.py` ({seconds / 60:.0f} min). One AST mutation at a time (operators, "
             "comparisons, `and`/`or`, `not`, unary minus, numeric and boolean constants) in a copy of the tree; "
             "the target's fast test files run against each mutant.", "",
             "| file | tests | mutants | killed | survived | not run |", "|---|---|---|---|---|---|"]
    for f in files:
        ms = [m for m in todo if m.file == f]
        killed = sum(m.status.startswith("killed") for m in ms)
        survived = sum(m.status == "survived" for m in ms)
        lines.append(f"| `{f}` | {' '.join(TARGETS[f])} | {len(ms)} | {killed} | {survived} | "
                     f"{len(ms) - killed - survived} |")
    lines += ["", "## Surviving mutants", ""]
    for f in files:
        src = (REPO / f).read_text().splitlines()
        for m in (m for m in todo if m.file == f and m.status == "survived"):
            code = src[m.line - 1].strip() if 0 < m.line <= len(src) else ""
            lines.append(f"- `{f}:{m.line}` {m.what}: `{code[:110]}`")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
