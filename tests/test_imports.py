"""The package's modules import each other without circles (lazy imports inside functions
count too: a circle hidden in a function is still a circle), and what a command's process imports
before its work starts and does after it ends."""

from __future__ import annotations

import ast
from pathlib import Path

import whispers_lab

PACKAGE = Path(whispers_lab.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports, anywhere in its body."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("whispers_lab")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("whispers_lab"):
                continue
            found.add(target)
            for alias in node.names:  # `from . import privacy` imports a submodule
                found.add(f"{target}.{alias.name}")
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name}
            for name, path in modules.items()}


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return False


def test_the_graph_sees_lazy_imports() -> None:
    graph = _graph()
    assert "whispers_lab.export" in graph["whispers_lab.validation"] or \
        "whispers_lab.validation" in graph["whispers_lab.export"]
    assert "whispers_lab.report.index" in graph["whispers_lab.report.runner"]


def test_export_and_validation_are_not_a_circle() -> None:
    graph = _graph()
    assert _reaches(graph, "whispers_lab.export", "whispers_lab.validation")
    assert not _reaches(graph, "whispers_lab.validation", "whispers_lab.export")


def test_report_index_and_runner_are_not_a_circle() -> None:
    graph = _graph()
    assert _reaches(graph, "whispers_lab.report.runner", "whispers_lab.report.index")
    assert not _reaches(graph, "whispers_lab.report.index", "whispers_lab.report.runner")


def _fresh(code: str) -> str:
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_the_command_line_does_not_import_scipy_signal() -> None:
    """The report's evaluation starts after the command line's imports; the simulator's only
    use of scipy.signal (about 0.3 s to import) waits until it simulates."""
    out = _fresh("import sys; from whispers_lab.cli import main; import whispers_lab.commands.simulate, "
                 "whispers_lab.commands.report, whispers_lab.commands.daily; "
                 "print('scipy.signal' in sys.modules)")
    assert out == "False"


def test_a_duckdb_report_imports_sqlglot_only_to_translate_for_spark() -> None:
    """SQLGlot (0.05-0.08 s) is imported by the first query translated for Spark, not by the
    command line, the evaluation or the charts, which a DuckDB report runs on its critical
    path; a translation still works."""
    out = _fresh("import sys; from whispers_lab.cli import main; import whispers_lab.commands.report, "
                 "whispers_lab.evaluate, whispers_lab.validation, whispers_lab.report.charts; "
                 "print('sqlglot' in sys.modules); from whispers_lab.engine import to_spark; "
                 "print(to_spark('SELECT isinf(x) FROM src.t WHERE d < $d', {'d': 1.5}))")
    assert out.splitlines() == [
        "False", "SELECT (x = CAST('Infinity' AS DOUBLE) OR x = CAST('-Infinity' AS DOUBLE)) "
                 "FROM src__t WHERE d < CAST(1.5 AS DOUBLE)"]


def test_the_report_process_reads_notebooks_without_the_iri_format_checker() -> None:
    out = _fresh(
        "import sys; from whispers_lab.report.runner import skip_iri_format_checker; "
        "skip_iri_format_checker(); import papermill, nbformat; "
        "from whispers_lab.paths import NOTEBOOKS_DIR; "
        "nb = nbformat.read(NOTEBOOKS_DIR / 'daily_report.ipynb', as_version=4); "
        "nbformat.validate(nb); "
        "print(sys.modules.get('rfc3987_syntax') is None, len(nb.cells) > 0)")
    assert out == "True True"
    # a process that already has jsonschema keeps whatever it loaded
    out = _fresh("import sys, jsonschema; had = sys.modules.get('rfc3987_syntax'); "
                 "from whispers_lab.report.runner import skip_iri_format_checker; "
                 "skip_iri_format_checker(); print(sys.modules.get('rfc3987_syntax') is had)")
    assert out == "True"


def test_the_console_script_skips_the_last_collections_and_keeps_the_exit_code(tmp_path) -> None:
    missing = tmp_path / "missing.duckdb"
    out = _fresh("import gc, sys; from whispers_lab.cli import entry; "
                 f"sys.argv = ['whispers-lab', 'validate', {str(missing)!r}]; code = entry(); "
                 "print(code, gc.get_freeze_count() > 0)")
    assert out.splitlines()[-1] == "1 True"


def test_drawing_a_handed_over_evaluation_imports_neither_scipy_nor_statsmodels(
        small_export, tmp_path) -> None:
    """The report's kernel imports the statistics modules only to unpickle the run's evaluation
    and draw it; scipy and statsmodels (about 1.2 s of CPU) are imported where a statistic is
    first computed (:mod:`whispers_lab.lazy`), so the kernel's start takes that much less from
    the evaluation running beside it. Every code cell of the daily report runs here, in order,
    in a fresh process, as the kernel runs them on a report run's hand-over. Nor does it
    import SQLGlot, which only a query translated for Spark needs (:mod:`whispers_lab.engine`)."""
    import json

    from whispers_lab.evaluate import evaluate_day
    from whispers_lab.export import open_export
    from whispers_lab.paths import NOTEBOOKS_DIR
    from whispers_lab.plan import load_plan
    from whispers_lab.report import privacy
    from whispers_lab.report.precomputed import save_evaluation

    with open_export(small_export) as export:
        evaluation = evaluate_day(export, 9, load_plan())
        document, _ = privacy.redact(export, evaluation.decision.to_dict())
    handed = tmp_path / "evaluation.pickle"
    save_evaluation(handed, evaluation, document)
    cells = [c for c in json.loads((NOTEBOOKS_DIR / "daily_report.ipynb").read_text())["cells"]
             if c["cell_type"] == "code"]
    assert "parameters" in cells[0]["metadata"]["tags"]
    parameters = {"export_path": str(small_export), "day": 9, "out_dir": str(tmp_path),
                  "reports_dir": str(tmp_path), "evaluation_path": str(handed)}
    script = tmp_path / "cells.py"
    script.write_text("\n".join(
        ["".join(cells[0]["source"])]  # the defaults, then papermill's injected values
        + [f"{name} = {value!r}" for name, value in parameters.items()]
        + ["".join(c["source"]) for c in cells[1:]]
        + ["import sys",
           "print(sorted({m.split('.')[0] for m in sys.modules}\n"
           "             & {'scipy', 'statsmodels', 'sqlglot'}))"]))
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         check=True, cwd=tmp_path).stdout.strip().splitlines()
    assert (tmp_path / "decision.json").is_file()  # the cells ran to the end
    assert out[-1] == "[]"


def test_lazy_names_import_at_first_use_and_then_are_the_real_ones() -> None:
    out = _fresh(
        "import sys; from whispers_lab.lazy import lazy_function, lazy_module; "
        "m = lazy_module('colorsys'); f = lazy_function('colorsys', 'rgb_to_hsv'); "
        "before = 'colorsys' in sys.modules; h = f(1.0, 0.0, 0.0); "
        "import colorsys; print(before, h == colorsys.rgb_to_hsv(1.0, 0.0, 0.0), "
        "m.hls_to_rgb is colorsys.hls_to_rgb, 'hls_to_rgb' in vars(m)); "
        "g = lazy_function('no_such_module_here', 'x'); "
        "print('defined')\n"
        "try:\n    g()\nexcept ModuleNotFoundError as e:\n    print(e.name)")
    assert out.splitlines() == ["False True True True", "defined", "no_such_module_here"]


def test_import_ahead_imports_every_named_module_once_and_a_first_use_waits_for_it(
        tmp_path) -> None:
    """:func:`whispers_lab.lazy.import_named_ahead` imports, in its own thread, every module a
    lazy name stands for; a first use from another thread meanwhile waits for that thread
    instead of importing the module beside it (each module here takes 0.3 s to import and
    counts who imported it). A second call while it runs returns the same thread."""
    for name in ("slow_one", "slow_two"):
        (tmp_path / f"{name}.py").write_text(
            "import threading, time\n"
            "time.sleep(0.3)\n"
            "BY = threading.current_thread().name\n"
            "import builtins\n"
            "builtins.IMPORTS = getattr(builtins, 'IMPORTS', 0) + 1\n"
            "def f():\n    return BY\n")
    out = _fresh(
        f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
        "import builtins\n"
        "from whispers_lab import lazy\n"
        "one = lazy.lazy_module('slow_one'); two = lazy.lazy_function('slow_two', 'f')\n"
        "print(lazy.named_modules()[-2:])\n"
        "thread = lazy.import_named_ahead()\n"
        "print(lazy.import_named_ahead() is thread)\n"  # a second run's call: the same thread
        "print(two(), one.BY)\n"  # first use at once: waits for the thread's imports
        "thread.join(); print(builtins.IMPORTS, thread.is_alive())")
    assert out.splitlines()[-4:] == ["('slow_one', 'slow_two')", "True",
                                     "whispers-lab-imports whispers-lab-imports", "2 False"]


def test_the_report_run_imports_the_statistics_libraries_as_its_evaluation_begins(
        small_export, tmp_path, monkeypatch) -> None:
    from whispers_lab import evaluate, lazy
    from whispers_lab.plan import load_plan
    from whispers_lab.report import runner

    order = []
    real_evaluate = evaluate.evaluate_day
    monkeypatch.setattr(lazy, "import_named_ahead", lambda: order.append("imports"))
    monkeypatch.setattr(evaluate, "evaluate_day",
                        lambda *a, **k: order.append("evaluate") or real_evaluate(*a, **k))
    pre = runner._precompute(small_export, 9, load_plan(None), tmp_path, None, summary_day=None,
                             index_due=False)
    pre.result()
    pre.close()
    assert order == ["imports", "evaluate"]
