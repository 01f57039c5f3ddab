"""Reading a cell's Python syntax, shared by `analysis` and `rewrite` (no TensorFlow here):
the names a target, a `case` pattern or a walrus binds, the code a magic in the cell runs
(`%time y = x ** 2`), the source segments of nodes in time linear in the source, every node
under a statement in one walk, and garbage collection paused while a cell's AST is built or
rewritten.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import gc
from collections.abc import Iterator

# Magics whose argument is code IPython runs in the user's namespace: `transform_cell` writes
# `%time y = x ** 2` as `get_ipython().run_line_magic('time', 'y = x ** 2')`, and the magic
# parses, transforms (with our rewriter among the shell's AST transformers) and runs it. The
# value says whether its assignments land in the namespace (%timeit runs the code inside a
# function of its own, so they do not).
CODE_MAGICS = {"time": True, "timeit": False, "prun": True, "capture": True}


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No garbage collection while a cell's AST is built or rewritten. Each AST node is a
    new object, and in a kernel holding TensorFlow's many objects the collections they
    trigger cost more than the work itself (measured: half of a 2,000-line cell's rewrite);
    these trees hold no cycles that need collecting meanwhile."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def ends_quiet(source: str, tree: ast.Module) -> bool:
    """Whether the cell's last statement is an expression followed by `;`, which tells
    IPython not to display its value (the text after the node, before any comment)."""
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        return False
    last = tree.body[-1]
    tail = Segments(source).after(last.end_lineno or 0, last.end_col_offset or 0)
    return tail.lstrip().startswith(";")


class Segments:
    """Source segments of AST nodes in time linear in the source (`ast.get_source_segment`
    splits the whole source on every call). Offsets are in UTF-8 bytes, as the AST's."""

    def __init__(self, source: str) -> None:
        self.lines = source.splitlines(keepends=True)
        self._encoded: dict[int, bytes] = {}

    def _line(self, index: int) -> bytes:
        line = self._encoded.get(index)
        if line is None:
            line = self._encoded[index] = self.lines[index].encode()
        return line

    def __call__(self, node: ast.AST) -> str:
        try:
            first, last = node.lineno - 1, node.end_lineno - 1
            start, end = node.col_offset, node.end_col_offset
        except AttributeError:
            return ""
        if end is None or not 0 <= first <= last < len(self.lines):
            return ""
        if first == last:
            return self._line(first)[start:end].decode(errors="replace")
        parts = [self._line(first)[start:]]
        parts += [self._line(i) for i in range(first + 1, last)]
        parts.append(self._line(last)[:end])
        return b"".join(parts).decode(errors="replace")

    def after(self, lineno: int, col: int) -> str:
        """The rest of the source from a position, comments cut off line by line."""
        if not 0 < lineno <= len(self.lines):
            return ""
        rest = [self._line(lineno - 1)[col:].decode(errors="replace")]
        rest += self.lines[lineno:]
        return "".join(r.split("#", 1)[0] for r in rest)


def magic_code(node: ast.AST) -> tuple[str, str, ast.Module, int] | None:
    """(magic, code, its parse, line offset) for a call that runs code through a magic
    (`get_ipython().run_line_magic('time', 'y = x ** 2')`, or run_cell_magic's body);
    line k of the code is line k + offset of the cell. None for anything else."""
    if not (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("run_line_magic", "run_cell_magic")
        and isinstance(node.func.value, ast.Call)
        and isinstance(node.func.value.func, ast.Name)
        and node.func.value.func.id == "get_ipython"
        and node.args
        and all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in node.args)
    ):
        return None
    name = node.args[0].value
    if name not in CODE_MAGICS:
        return None
    if node.func.attr == "run_line_magic" and len(node.args) == 2:
        code = _code_after_options(node.args[1].value)
        offset = node.lineno - 1
    elif node.func.attr == "run_cell_magic" and len(node.args) == 3:
        code = _code_after_options(node.args[2].value)
        offset = node.lineno  # the magic's body starts on the line after `%%time`
    else:
        return None
    return None if code is None else (name, code, parse_cached(code), offset)


@functools.lru_cache(maxsize=256)
def parse_cached(code: str) -> ast.Module | None:
    """The parse of a magic's code, shared: never mutate it."""
    try:
        return ast.parse(code)
    except SyntaxError:
        return None


def _code_after_options(line: str) -> str | None:
    """The code of a magic's line, after its options (`-n 10 y = x ** 2`)."""
    words = line.split(" ")
    for skip in range(len(words)):
        if skip and not words[0].startswith("-"):
            break
        code = " ".join(words[skip:]).strip() if skip else line
        tree = parse_cached(code)
        if tree is not None and tree.body:
            return code
    return None


# Statements with a body: their header is read by _stmt, their body statement by statement.
_COMPOUND = tuple(
    getattr(ast, n)
    for n in (
        "For", "AsyncFor", "While", "If", "With", "AsyncWith", "Try", "TryStar", "Match",
        "FunctionDef", "AsyncFunctionDef", "ClassDef",
    )
    if hasattr(ast, n)
)  # fmt: skip


def _nodes(root: ast.AST) -> list[ast.AST]:
    """Every node under `root` (as `ast.walk`, in another order, without the contexts and
    operators, which are read from their parents): the analysis walks each statement, and
    `ast.walk`'s generators were most of its time on a long cell."""
    out, todo = [root], [root]
    fields = _CHILD_FIELDS
    while todo:
        node = todo.pop()
        names = fields.get(type(node))
        if names is None:
            names = fields[type(node)] = tuple(
                f for f in node._fields if f not in ("ctx", "op", "ops")
            )
        for name in names:
            child = getattr(node, name, None)
            if isinstance(child, ast.AST):
                out.append(child)
                todo.append(child)
            elif isinstance(child, list):
                for item in child:
                    if isinstance(item, ast.AST):
                        out.append(item)
                        todo.append(item)
    return out


# Leaves: a name's `id` and a constant's `value` are never nodes (most of a cell's nodes).
_CHILD_FIELDS: dict[type, tuple[str, ...]] = {ast.Name: (), ast.Constant: ()}


def _pos(node: ast.AST) -> dict:
    return {k: getattr(node, k) for k in ("lineno", "col_offset", "end_lineno", "end_col_offset")}


def _walruses(expr: ast.AST) -> list[ast.NamedExpr]:
    """The walrus expressions in `expr` that bind in the cell's scope (not a lambda's)."""
    out, todo = [], [expr]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.NamedExpr) and isinstance(node.target, ast.Name):
            out.append(node)
        if isinstance(node, (ast.Lambda, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        todo.extend(ast.iter_child_nodes(node))
    return out


def walrus_names(expr: ast.AST) -> list[str]:
    nodes = sorted(_walruses(expr), key=lambda n: (n.end_lineno, n.end_col_offset))
    return list(dict.fromkeys(n.target.id for n in nodes))


def _pattern_names(pattern: ast.AST) -> list[str]:
    """Names a `case` pattern binds: `case (a, b)`, `case {"k": v, **rest}`, `case [*xs]`."""
    names = []
    for sub in ast.walk(pattern):
        name = getattr(sub, "name", None) or (
            getattr(sub, "rest", None) if type(sub).__name__ == "MatchMapping" else None
        )
        if isinstance(name, str):
            names.append(name)
    return list(dict.fromkeys(names))


def _free_names(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    """Names a function's body reads from the namespace when it runs: those it loads and
    neither takes as a parameter nor assigns (unless it declares them `global`)."""
    local = {a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)}
    loads = []
    for stmt in node.body:
        for sub in ast.walk(stmt):
            if isinstance(sub, ast.Name):
                if isinstance(sub.ctx, ast.Load):
                    loads.append(sub)
                else:
                    local.add(sub.id)
            elif isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                local.add(sub.name)
    local -= _declared_globals(node)
    loads.sort(key=lambda n: (n.lineno, n.col_offset))
    return list(dict.fromkeys(n.id for n in loads if n.id not in local))


def _declared_globals(node: ast.AST) -> set[str]:
    return {n for sub in ast.walk(node) if isinstance(sub, ast.Global) for n in sub.names}


def _target_names(node: ast.AST | None) -> list[str]:
    if node is None:
        return []
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, (ast.Tuple, ast.List)):
        return [n for elt in node.elts for n in _target_names(elt)]
    if isinstance(node, ast.Starred):
        return _target_names(node.value)
    return []


def _is_method_call(node: ast.AST, method: str) -> bool:
    """`name.method(...)`"""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == method
        and isinstance(node.func.value, ast.Name)
    )


def dotted_name(node: ast.AST) -> str:
    """`tf.random.normal` for the function of a call."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _is_tape_ctor(expr: ast.AST) -> bool:
    return (
        isinstance(expr, ast.Call)
        and isinstance(expr.func, (ast.Attribute, ast.Name))
        and (getattr(expr.func, "attr", None) or getattr(expr.func, "id", None)) == "GradientTape"
    )
