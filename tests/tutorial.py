"""Reading tutorial chapters for the tests: quoted code, runnable snippets, and their printed output.

A chapter has three kinds of fenced blocks:
    ```python            first line "# from FILE: NAME"  -> a quote of function/class NAME in FILE, kept verbatim
    ```python run        a snippet the reader can paste; the tests run it
    ```text              right after a run block: exactly what it prints
"""

import ast
import contextlib
import io
import re
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w+)?( run)?\n(.*?)^```", re.S | re.M)
QUOTE = re.compile(r"# from (\S+): (\S+)\n")


def chapter(n: int) -> Path:
    (path,) = sorted((ROOT / "tutorial").glob(f"{n:02d}_*.md"))
    return path


def blocks(path: Path):
    """[(language, is_run, body)] in order."""
    return [(m.group(1) or "", bool(m.group(2)), m.group(3)) for m in FENCE.finditer(path.read_text())]


def quotes(path: Path):
    """[(file, name, quoted text)] for every quoted block."""
    out = []
    for lang, run, body in blocks(path):
        m = QUOTE.match(body)
        if lang == "python" and not run and m:
            out.append((m.group(1), m.group(2), body[m.end():]))
    return out


def source_of(file: str, name: str) -> str:
    """The source text of `name` (a function, a class, or Class.method) in `file`, dedented."""
    text = (ROOT / file).read_text()
    tree = ast.parse(text)
    scope = tree.body
    node = None
    for part in name.split("."):
        node = next((n for n in scope if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == part), None)
        if node is None:
            raise LookupError(f"{file} has no {name}")
        scope = node.body
    lines = text.splitlines(keepends=True)
    start = min([d.lineno for d in node.decorator_list] + [node.lineno]) - 1
    return textwrap.dedent("".join(lines[start : node.end_lineno]))


def runs(path: Path):
    """[(code, expected output)] for every run block followed by a text block."""
    bs = blocks(path)
    out = []
    for i, (lang, run, body) in enumerate(bs):
        if run:
            expected = bs[i + 1][2] if i + 1 < len(bs) and bs[i + 1][0] == "text" else None
            out.append((body, expected))
    return out


def execute(code: str, namespace: dict) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(code, "<tutorial>", "exec"), namespace)
    return buf.getvalue()


def run_chapter(n: int) -> dict:
    """Run every snippet of chapter n in one namespace, check each printed output; return the namespace."""
    path = chapter(n)
    ns = {"__name__": "__tutorial__"}
    for code, expected in runs(path):
        got = execute(code, ns)
        if expected is not None:
            assert got == expected, f"{path.name}: a snippet printed\n{got}\nbut the chapter shows\n{expected}"
    return ns
