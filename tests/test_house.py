"""How the code is laid out: what the mission promises a reader, checked by reading the source."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "minivtp").glob("**/*.py")) + [ROOT / "weights.py"]


def test_every_equation_of_the_paper_is_named_in_minivtp():
    # "grep 'Eq. 5'" finds where Eq. 5 is implemented: each of Eq. 1-8 by its own number, not only inside a range
    text = "\n".join(p.read_text() for p in (ROOT / "minivtp").glob("**/*.py"))
    for n in range(1, 9):
        assert re.search(rf"Eq\. {n}\b(?!-)", text), f"Eq. {n} is named nowhere in minivtp/"


def local_imports(path: Path) -> set:
    """Modules of this project that `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            where = ROOT / name.replace(".", "/")
            if name == "weights" or (name.startswith("minivtp.") and (where.with_suffix(".py").is_file() or
                                                                      (where / "__init__.py").is_file())):
                found.add(name)
    return found


def module_name(path: Path) -> str:
    if path.name == "weights.py":
        return "weights"
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_import_graph_has_no_circle():
    graph = {module_name(p): local_imports(p) - {module_name(p)} for p in SOURCES}
    def visit(node, path):
        if node in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(node):] + [node]))
        for nxt in graph.get(node, ()):
            visit(nxt, path + [node])

    for node in graph:
        visit(node, [])
    assert "minivtp.checkpoint" in graph["minivtp.lab.toy"]  # the toy loads through the loader's pieces
    assert "weights" not in graph["minivtp.hosts.llava"] and "weights" not in graph["minivtp.tokenizer"]  # below it


def test_the_lower_rooms_do_not_know_the_upper_ones():
    # model.py knows nothing of the method, vtp.py nothing of generation, weights.py no model kind but its own
    assert local_imports(ROOT / "minivtp/model.py") == set()
    assert local_imports(ROOT / "minivtp/vtp.py") <= {"minivtp.model"}
    assert not {m for m in local_imports(ROOT / "weights.py")} & {"minivtp.lab.toy", "minivtp.generate", "minivtp.lab.demo"}


def test_demo_and_answer_print_no_warning_even_without_numpy(tmp_path):
    # torch warns on import when numpy is missing, as on a fresh `pip install torch -e .`; numpy is not ours to need
    import subprocess
    import sys
    block_numpy = "import sys, runpy; sys.modules['numpy'] = None; sys.argv = {argv!r}; runpy.run_module({mod!r}, run_name='__main__')"
    demo = subprocess.run([sys.executable, "-c", block_numpy.format(argv=["demo", "--out", str(tmp_path / "d.png")],
                                                                   mod="minivtp.lab.demo")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert demo.returncode == 0, demo.stderr
    assert demo.stderr == "", demo.stderr
    answer = subprocess.run([sys.executable, "-c", block_numpy.format(
        argv=["minivtp", "answer", "--weights", str(tmp_path / "none"), "--video", "v.mp4", "--question", "q"],
        mod="minivtp")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert answer.returncode == 2 and answer.stderr.splitlines() == [f"error: {tmp_path / 'none'}: not a directory"]


def test_the_readable_core_knows_nothing_of_the_fast_path():
    # model.py and generate.py hold what the paper says; minivtp/fast/__init__.py plugs in at generate's `decoder` only
    core = ("model", "generate", "vtp", "rivals/fastv", "rivals/look_m", "rivals/prumerge")
    for name in core:
        assert not {m for m in local_imports(ROOT / f"minivtp/{name}.py") if m.startswith("minivtp.fast")}, name
    for name in ("model", "generate"):
        text = (ROOT / f"minivtp/{name}.py").read_text().lower()
        for word in ("cuda graph", "torch.compile", "staticcache", "static cache", "fuse_qkv", "q+k+v"):
            assert word not in text, f"minivtp/{name}.py names {word!r}"
    assert len((ROOT / "minivtp/model.py").read_text().splitlines()) <= 380
    assert len((ROOT / "minivtp/generate.py").read_text().splitlines()) <= 300


def test_rooms_by_role():
    # the paper's files and the few small pieces every room uses loose at the top; every other concern a folder
    loose = sorted(p.stem for p in (ROOT / "minivtp").glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(loose) <= 8, loose
    assert {"model", "vtp", "generate"} <= set(loose)
    assert {"hosts", "rivals", "fast", "evaluation", "lab"} <= {p.parent.name for p in (ROOT / "minivtp").glob("*/*.py")}
    assert len([p for p in (ROOT / "bench").glob("*.py") if p.name not in ("__init__.py", "common.py")]) <= 5


def test_the_paper_s_files_know_no_rival_and_no_caller_asks_which_host_it_holds():
    # a rival plugs in at generate's `method`; a host is used through its contract (minivtp/hosts/__init__.py)
    for name in ("model", "vtp", "generate"):
        tree = ast.parse((ROOT / f"minivtp/{name}.py").read_text())
        assert not {m for m in local_imports(ROOT / f"minivtp/{name}.py") if m.startswith("minivtp.rivals")}, name
        names = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        assert not names & {"fastv", "look-m", "prumerge+"}, f"minivtp/{name}.py switches on a rival's name"
        fields = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        assert not fields & {"recent", "important", "merge"}, f"minivtp/{name}.py reads a rival's option"
    callers = ["minivtp/__main__.py", "minivtp/cli.py", "minivtp/evaluation/pipeline.py", "minivtp/evaluation/loop.py",
               "minivtp/lab/explore.py"]
    for f in callers:
        text = (ROOT / f).read_text()
        assert ".arrangement" not in text and 'hasattr(model, "qformer")' not in text, f
    for f in (ROOT / "minivtp/hosts").glob("*.py"):
        assert "prumerge=" not in f.read_text(), f.name
