"""The house rules of issue 19, checked on the source itself (docs/architecture.md):

* the top level of ``hlvm/`` holds only its public faces — at most :data:`MAX_TOP_MODULES` modules
  besides ``__init__.py``; everything else lives in a package named after its concept;
* no function in ``hlvm/`` or ``models/`` is longer than :data:`MAX_FUNCTION_LINES` lines of code
  (blank lines, comment-only lines and the docstring not counted; a nested function counts
  inside the function that holds it);
* the import graph has no cycles between hlvm's packages and modules.
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
MAX_TOP_MODULES = 8
MAX_FUNCTION_LINES = 45


def code_lines(source: str, node: ast.AST) -> int:
    """Lines of ``node`` (a function) that hold code: not blank, not only a comment, not its docstring."""
    lines = set(range(node.lineno, node.end_lineno + 1))
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        lines -= set(range(body[0].lineno, body[0].end_lineno + 1))
    code = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                            tokenize.ENDMARKER):
            code.update(range(tok.start[0], tok.end[0] + 1))
    return len(lines & code)


def long_functions(paths, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    out = []
    for path in paths:
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = code_lines(source, node)
                if n > limit:
                    out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_code_lines_counts_code_only():
    source = 'def f(x):\n    """Doc,\n    two lines."""\n\n    # a comment\n    y = (x +\n         1)\n    return y\n'
    assert code_lines(source, ast.parse(source).body[0]) == 4  # def, y = (x +, 1), return


def test_top_level_holds_only_public_faces():
    modules = sorted(p.name for p in (ROOT / "hlvm").glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert len(modules) <= MAX_TOP_MODULES, modules


def test_no_long_functions():
    paths = sorted((ROOT / "hlvm").rglob("*.py")) + sorted((ROOT / "models").rglob("*.py"))
    assert long_functions(paths) == []


def test_detector_finds_a_long_function(tmp_path):
    f = tmp_path / "long.py"
    f.write_text("def g():\n" + "".join(f"    a{i} = {i}\n" for i in range(MAX_FUNCTION_LINES)) + "    return 0\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert long_functions([f]) == [f"long.py:1 g ({MAX_FUNCTION_LINES + 2} lines)"]
    finally:
        ROOT = saved


def _imports(path: Path, package: str) -> set[str]:
    """The hlvm modules that ``path`` (module ``package``) imports, absolute or relative."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.startswith("hlvm"):
                out.add(name)
                out.update(f"{name}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("hlvm"))
    return out


def test_no_import_cycles_between_modules():
    files = {}
    for p in (ROOT / "hlvm").rglob("*.py"):
        rel = p.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        files[name] = (p, name if rel.name == "__init__" else name.rsplit(".", 1)[0])
    g = nx.DiGraph()
    for name, (p, package) in files.items():
        for target in _imports(p, package):
            if target in files and target != name and not name.startswith(target + "."):
                g.add_edge(name, target)
    assert list(nx.simple_cycles(g)) == []
