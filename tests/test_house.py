"""How the code is laid out: what the mission promises a reader, checked by reading the source."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "minivtp").glob("*.py")) + [ROOT / "weights.py"]


def test_every_equation_of_the_paper_is_named_in_minivtp():
    # "grep 'Eq. 5'" finds where Eq. 5 is implemented: each of Eq. 1-8 by its own number, not only inside a range
    text = "\n".join(p.read_text() for p in (ROOT / "minivtp").glob("*.py"))
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
            if name == "weights" or (name.startswith("minivtp.") and (ROOT / (name.replace(".", "/") + ".py")).is_file()):
                found.add(name)
    return found


def module_name(path: Path) -> str:
    return "weights" if path.name == "weights.py" else f"minivtp.{path.stem}"


def test_the_import_graph_has_no_circle():
    graph = {module_name(p): local_imports(p) - {module_name(p)} for p in SOURCES}
    def visit(node, path):
        if node in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(node):] + [node]))
        for nxt in graph.get(node, ()):
            visit(nxt, path + [node])

    for node in graph:
        visit(node, [])
    assert "weights" in graph["minivtp.toy"]  # the toy loads through the loader's pieces, not the other way


def test_the_lower_rooms_do_not_know_the_upper_ones():
    # model.py knows nothing of the method, vtp.py nothing of generation, weights.py no model kind but its own
    assert local_imports(ROOT / "minivtp/model.py") == set()
    assert local_imports(ROOT / "minivtp/vtp.py") <= {"minivtp.model"}
    assert not {m for m in local_imports(ROOT / "weights.py")} & {"minivtp.toy", "minivtp.generate", "minivtp.demo"}


def test_demo_and_answer_print_no_warning_even_without_numpy(tmp_path):
    # torch warns on import when numpy is missing, as on a fresh `pip install torch -e .`; numpy is not ours to need
    import subprocess
    import sys
    block_numpy = "import sys, runpy; sys.modules['numpy'] = None; sys.argv = {argv!r}; runpy.run_module({mod!r}, run_name='__main__')"
    demo = subprocess.run([sys.executable, "-c", block_numpy.format(argv=["demo", "--out", str(tmp_path / "d.png")],
                                                                   mod="minivtp.demo")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert demo.returncode == 0, demo.stderr
    assert demo.stderr == "", demo.stderr
    answer = subprocess.run([sys.executable, "-c", block_numpy.format(
        argv=["minivtp", "answer", "--weights", str(tmp_path / "none"), "--video", "v.mp4", "--question", "q"],
        mod="minivtp")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert answer.returncode == 2 and answer.stderr.splitlines() == [f"error: {tmp_path / 'none'}: not a directory"]


def test_the_readable_core_knows_nothing_of_the_fast_path():
    # model.py and generate.py hold what the paper says; minivtp/fast.py plugs in at generate's `decoder` only
    core = ("model", "generate", "vtp", "baselines")
    for name in core:
        assert not {m for m in local_imports(ROOT / f"minivtp/{name}.py") if m.startswith("minivtp.fast")}, name
    for name in ("model", "generate"):
        text = (ROOT / f"minivtp/{name}.py").read_text().lower()
        for word in ("cuda graph", "torch.compile", "staticcache", "static cache", "fuse_qkv", "q+k+v"):
            assert word not in text, f"minivtp/{name}.py names {word!r}"
    assert len((ROOT / "minivtp/model.py").read_text().splitlines()) <= 380
    assert len((ROOT / "minivtp/generate.py").read_text().splitlines()) <= 300
