"""What a cell reads, binds and does on the way, from its AST alone (no TensorFlow here).

Two jobs:
- analysis: which names the cell reads from the namespace, which it binds, and for
  each statement the constructs that break or poison a gradient (`.numpy()`, `argmax`,
  `assign`, `tf.where`...), so a diagnosis can name the cell line;
- rewriting: a hook call after every binding, so a name bound inside the cell can be
  watched from the moment it exists, and a wrapper around the last expression.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import gc
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

BIND_HOOK = "__tapemagic_bind__"
LAST_HOOK = "__tapemagic_last__"

# Magics whose argument is code IPython runs in the user's namespace: `transform_cell` writes
# `%time y = x ** 2` as `get_ipython().run_line_magic('time', 'y = x ** 2')`, and the magic
# parses, transforms (with our rewriter among the shell's AST transformers) and runs it. The
# value says whether its assignments land in the namespace (%timeit runs the code inside a
# function of its own, so they do not).
CODE_MAGICS = {"time": True, "timeit": False, "prun": True, "capture": True}

# Ways a value leaves TensorFlow: the tape cannot follow it back
# (docs/diagnosis.md#left-tensorflow).
_LEAVE_METHODS = {"numpy", "item", "tolist", "astype", "__array__"}
_LEAVE_BUILTINS = {"float", "int", "bool", "complex", "round"}
_LEAVE_MODULES = {"np", "numpy", "math", "scipy", "jnp"}
# Ops with no gradient, or one that is None/zero everywhere
# (docs/diagnosis.md#non-differentiable-op).
_NONDIFF = {
    "argmax", "argmin", "round", "floor", "ceil", "rint", "sign", "stop_gradient",
    "equal", "not_equal", "greater", "greater_equal", "less", "less_equal",
    "logical_and", "logical_or", "logical_not", "floordiv", "floor_div", "floormod",
    "top_k", "unique", "is_nan", "is_finite", "is_inf", "searchsorted", "bucketize",
    "histogram_fixed_width", "random_uniform", "count_nonzero",
}  # fmt: skip
_INT_DTYPES = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool"}
# Methods that write state: the write itself has no gradient (docs/diagnosis.md#state-on-path).
_STATE_METHODS = {
    "assign", "assign_add", "assign_sub", "scatter_update", "scatter_add", "scatter_sub",
    "scatter_nd_update", "scatter_nd_add", "apply_gradients",
}  # fmt: skip
# Ops whose derivative is infinite or undefined somewhere: NaN/Inf sources
# (docs/diagnosis.md#infinite-derivative, and docs/diagnosis.md#nan-from-where under a tf.where).
_SINGULAR = {
    "sqrt", "rsqrt", "log", "log1p", "reciprocal", "pow", "divide", "truediv", "div",
    "acos", "asin", "atanh", "norm", "xlogy", "xdivy", "divide_no_nan", "reduce_logsumexp",
    "acosh", "lgamma", "digamma",
}  # fmt: skip


@dataclass
class Finding:
    """One construct on a line that matters to a gradient."""

    kind: str  # "leave", "nondiff", "cast_int", "state", "where", "singular", "sign", "random"
    lineno: int
    text: str  # the source segment, e.g. "x.numpy()"


@dataclass(slots=True)
class Statement:
    """A statement that binds names, flattened out of the cell's compound statements.

    Read-only, and made of tuples and frozensets (shared between statements when equal):
    a long cell's analysis is cached, and a statement holding lists and sets of its own
    was five objects for the garbage collector to track instead of one (each cached
    2,000-line cell added 10,000 to every full collection, and set off more of them)."""

    lineno: int
    binds: tuple[str, ...]
    reads: frozenset[str]
    findings: tuple[Finding, ...] = ()
    conditions: frozenset[str] = frozenset()  # names read by enclosing if/while tests
    text: str = ""


@dataclass
class TapeBlock:
    """A `with tf.GradientTape() as name:` block written in the cell itself."""

    name: str
    start: int
    end: int


@dataclass
class Lint:
    """A mistake in the cell's own use of tapes, found from the code.

    `cause` is the cause's number in docs/diagnosis.md: 4 (docs/diagnosis.md#target-after-tape),
    10 (docs/diagnosis.md#nothing-watched), 13 (docs/diagnosis.md#outer-tape-closed) or 15
    (docs/diagnosis.md#summed-targets)."""

    cause: int
    lineno: int
    message: str


def _closure(edges: dict[str, set[str]], start: list[str]) -> set[str]:
    """Every name reached from `start` by one edge or more."""
    seen: set[str] = set()
    while start:
        for name in edges.get(start.pop(), ()):
            if name not in seen:
                seen.add(name)
                start.append(name)
    return seen


@dataclass
class CellInfo:
    source: str
    reads: list[str]  # names read before the cell binds them: they come from the namespace
    binds: list[str]  # names the cell binds, in order of first binding
    statements: list[Statement]
    has_last_expr: bool
    conditions: dict[str, int]  # name -> line of the first if/while test that reads it
    tapes: list[TapeBlock]
    lints: list[Lint]
    bind_lines: dict[str, list[int]]
    quiet: bool = False  # the last expression ends with `;`: IPython shows no value
    has_walrus: bool = True  # whether the cell may hold a `:=` (the rewriter looks for them)
    call_lines: set[int] | None = None  # lines with a call on them (None: not known)
    # ast.dump of the code each magic in the cell runs (`%time y = x ** 2`) -> the offset
    # of its line numbers in the cell, for the rewriter to number that code's hooks.
    magic_offsets: dict[str, int] = field(default_factory=dict)

    def line(self, lineno: int) -> str:
        lines = self.source.splitlines()
        return lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""

    def depends_on(self, target: str) -> set[str]:
        """Every name `target` was computed from, by the cell's dataflow (order ignored)."""
        return _closure(self._binders(), [target])

    def _binders(self) -> dict[str, set[str]]:
        """Name -> what its binding statements read, built once."""
        binders = self.__dict__.get("_binders_map")
        if binders is None:
            binders = {}
            for st in self.statements:
                for name in st.binds:
                    binders.setdefault(name, set()).update(st.reads)
            self.__dict__["_binders_map"] = binders
        return binders

    def computed_from(self, sources: Iterable[str]) -> set[str]:
        """Every name computed from any of `sources`: the names whose `depends_on` meets
        them, in one pass (asking `depends_on` of each name is quadratic in a long cell)."""
        users = self.__dict__.get("_users")
        if users is None:  # name -> the names bound from it, built once
            users = {}
            for name, reads in self._binders().items():
                for read in reads:
                    users.setdefault(read, set()).add(name)
            self.__dict__["_users"] = users
        return _closure(users, list(sources))

    def path(self, source: str, target: str) -> list[Statement]:
        """Statements on some dataflow path from `source` to `target`, in cell order."""
        upstream = self.depends_on(target) | {target}
        reached = {source}
        on_path = []
        changed = True
        while changed:
            changed = False
            for st in self.statements:
                if st in on_path or not (st.reads & reached):
                    continue
                if any(b in upstream for b in st.binds):
                    on_path.append(st)
                    reached.update(st.binds)
                    changed = True
        return sorted(on_path, key=lambda s: s.lineno)


def analyse(source: str, numeric_modules: frozenset[str] = frozenset()) -> CellInfo:
    """Analyse cell code (plain Python, after IPython's own transforms).

    `numeric_modules` names the namespace's non-TensorFlow numeric modules (for
    `import numpy as anything`); the usual aliases are known without it. The result is
    shared between calls: treat it as read-only.
    """
    return _analyse(source, numeric_modules, False)[0]


def analyse_parsed(
    source: str, numeric_modules: frozenset[str] = frozenset()
) -> tuple[CellInfo, ast.Module | None]:
    """`analyse`, and the parse it made of the cell: the caller may run (and rewrite) it
    instead of parsing the cell a second time. None when the analysis came from the cache
    (a cell is often re-run unchanged: it is analysed once)."""
    return _analyse(source, numeric_modules, True)


def _analyse(
    source: str, numeric_modules: frozenset[str], keep_tree: bool
) -> tuple[CellInfo, ast.Module | None]:
    key = (source, numeric_modules)
    info = _ANALYSES.get(key)
    if info is not None:
        _ANALYSES.move_to_end(key)
        return info, None
    with gc_paused():
        tree: ast.Module | None = ast.parse(source)
        info = _Analyser(source, numeric_modules).run(tree)
        if not keep_tree:
            tree = None  # freed while collection is paused: no node reaches an old generation
    _ANALYSES[key] = info
    _cached_statements[0] += len(info.statements)
    # At most 32 cells and 20,000 statements: what the cache holds, every full garbage
    # collection walks (one 2,000-line cell's analysis is some 2,000 objects).
    while len(_ANALYSES) > 1 and (len(_ANALYSES) > 32 or _cached_statements[0] > 20_000):
        _cached_statements[0] -= len(_ANALYSES.popitem(last=False)[1].statements)
    return info, tree


_ANALYSES: OrderedDict[tuple[str, frozenset[str]], CellInfo] = OrderedDict()
_cached_statements = [0]  # statements in _ANALYSES


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


def findings_in(source: str) -> list[Finding]:
    """Every culprit anywhere in a piece of code (used to look inside called functions)."""
    analyser = _Analyser(source)
    return [f for node in ast.parse(source).body for f in analyser._find(node)]


class _Analyser:
    def __init__(self, source: str, numeric_modules: frozenset[str] = frozenset()):
        self.source = source
        self.segment = Segments(source)
        self.offset = 0  # added to line numbers: inside a magic's code, where its line 1 is
        self.numeric_modules = set(numeric_modules)
        # Ordered sets (dicts): a long cell binds and reads many names, and a list's `in`
        # made the analysis quadratic in them.
        self.reads: dict[str, None] = {}
        self.binds: dict[str, None] = {}
        self.bind_lines: dict[str, list[int]] = {}
        self.statements: list[Statement] = []
        self.conditions: dict[str, int] = {}
        self.tapes: list[TapeBlock] = []
        self.gradient_calls: list[tuple[str, ast.Call]] = []
        self.watch_calls: list[tuple[str, ast.Call]] = []
        self.no_auto_watch: set[str] = set()  # tapes made with watch_accessed_variables=False
        self.functions: dict[str, list[str]] = {}  # a function the cell defines -> free names
        self.magic_offsets: dict[str, int] = {}
        self._walked: tuple[ast.AST | None, list[ast.AST]] = (None, [])
        self.call_lines: set[int] = set()
        self._frozen: dict[frozenset[str], frozenset[str]] = {_NONE: _NONE}
        # Only a cell with a magic line in it has magic calls to look for in every statement.
        self.has_magics = "run_line_magic" in source or "run_cell_magic" in source
        self.has_walrus = ":=" in source  # else no statement needs walking for one

    def run(self, tree: ast.Module) -> CellInfo:
        self._body(tree.body, set())
        has_last = bool(tree.body) and isinstance(tree.body[-1], ast.Expr)
        quiet = ends_quiet(self.source, tree)
        return CellInfo(
            source=self.source,
            reads=list(self.reads),
            binds=list(self.binds),
            statements=self.statements,
            has_last_expr=has_last,
            conditions=self.conditions,
            tapes=self.tapes,
            lints=self._lints(),
            bind_lines=self.bind_lines,
            quiet=quiet,
            magic_offsets=self.magic_offsets,
            has_walrus=self.has_walrus,
            call_lines=self.call_lines,
        )

    # -- walking statements in execution order --------------------------------------
    def _body(self, body: list[ast.stmt], conds: set[str]) -> None:
        for node in body:
            self._stmt(node, conds)

    def _stmt(self, node: ast.stmt, conds: set[str]) -> None:
        if self.has_magics and not isinstance(node, _COMPOUND):
            self._magics_in(node, conds)  # the magic's code runs before the statement ends
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            self._bind([node.name], node.lineno + self.offset)
            self.functions[node.name] = _free_names(node)  # read when it is called
            self._function_globals(node)
        elif isinstance(node, ast.ClassDef):
            self._bind([node.name], node.lineno + self.offset)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [(a.asname or a.name).split(".")[0] for a in node.names]
            self._bind(names, node.lineno + self.offset)
            if isinstance(node, ast.Import):  # `import numpy as npp` in the cell itself
                self.numeric_modules |= {
                    (a.asname or a.name).split(".")[0]
                    for a in node.names
                    if a.name.split(".")[0] in _LEAVE_MODULES
                }
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            value = node.value
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if isinstance(node, ast.AugAssign):  # `x += 1` reads x first, as x = x + 1 does
                target = node.target
                if isinstance(target, ast.Name):
                    target = ast.Name(target.id, ast.Load(), **_pos(target))
                reads = self._read(target) | self._read(node.value)
            else:
                reads = self._read(value) if value is not None else set()
            names = [n for t in targets for n in _target_names(t)]
            for t in targets:  # `a[i] = ...` and `obj.attr = ...` read a and obj
                if not isinstance(t, (ast.Name, ast.Tuple, ast.List, ast.Starred)):
                    reads |= self._read(t)
            self._record(node, names, reads, value, conds)
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            reads = self._read(node.iter)
            self._record(node, _target_names(node.target), reads, node.iter, conds)
            for name in reads:  # how many times the body runs is control flow too
                self.conditions.setdefault(name, node.lineno + self.offset)
            self._body(node.body, conds | reads)
            self._body(node.orelse, conds | reads)
        elif isinstance(node, (ast.If, ast.While)):
            test_reads = self._read(node.test)
            self._walrus_statement(node, node.test, test_reads, conds)
            for name in test_reads:
                self.conditions.setdefault(name, node.lineno + self.offset)
            self._body(node.body, conds | test_reads)
            self._body(node.orelse, conds | test_reads)
        elif type(node).__name__ == "Match":  # Python 3.10+
            reads = self._read(node.subject)
            if not self._walrus_statement(node, node.subject, reads, conds):
                self._findings_only(node.subject)
            for name in reads:  # which case runs is control flow
                self.conditions.setdefault(name, node.lineno + self.offset)
            for case in node.cases:
                reads_here = reads | self._read(case.pattern)  # `case Color.RED` reads Color
                names = _pattern_names(case.pattern)
                if names:
                    self._record(case.pattern, names, reads_here, None, conds)
                guard = self._read(case.guard) if case.guard is not None else set()
                for name in guard:
                    self.conditions.setdefault(name, case.guard.lineno + self.offset)
                self._body(case.body, conds | reads_here | guard)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                reads = self._read(item.context_expr)
                names = _target_names(item.optional_vars) if item.optional_vars else []
                if names and _is_tape_ctor(item.context_expr):
                    end = (node.end_lineno or 0) + self.offset
                    self.tapes.append(TapeBlock(names[0], node.lineno + self.offset, end))
                    if any(
                        k.arg == "watch_accessed_variables"
                        and isinstance(k.value, ast.Constant)
                        and k.value.value is False
                        for k in item.context_expr.keywords
                    ):
                        self.no_auto_watch.add(names[0])
                if names:
                    self._record(node, names, reads, item.context_expr, conds)
            self._body(node.body, conds)
        elif isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
            self._body(node.body, conds)
            for handler in node.handlers:
                if handler.name:
                    self._bind([handler.name], handler.lineno + self.offset)
                self._body(handler.body, conds)
            self._body(node.orelse, conds)
            self._body(node.finalbody, conds)
        elif isinstance(node, ast.Expr):
            reads = self._read(node.value)
            # `v.assign(expr)` writes state: treat it as binding v from expr.
            call = node.value
            if (
                isinstance(call, ast.Call)
                and isinstance(call.func, ast.Attribute)
                and call.func.attr in _STATE_METHODS
                and isinstance(call.func.value, ast.Name)
            ):
                self._record(node, [call.func.value.id], reads, call, conds)
            elif not self._walrus_statement(node, node.value, reads, conds):
                self._findings_only(node.value)
        else:  # return, raise, assert, del, global...: reads, and a walrus binds
            reads = set()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.expr):
                    reads |= self._read(child)
            self._walrus_statement(node, node, reads, conds)

    def _record(self, node, names, reads, value, conds, walrus=()) -> None:
        """A statement that binds `names` (and the names its walruses bound while read)."""
        findings = tuple(self._find(value)) if value is not None else ()
        text = self.segment(node)
        binds = tuple(dict.fromkeys([*walrus, *names]))
        lineno = node.lineno + self.offset
        st = Statement(lineno, binds, self._shared(reads), findings, self._shared(conds), text)
        self.statements.append(st)
        self._bind(names, node.lineno + self.offset)

    def _walrus_statement(self, node, expr, reads, conds) -> bool:
        """Record the names a walrus in `expr` binds (already bound by `_read`)."""
        names = walrus_names(expr) if self.has_walrus else []
        if names:
            self._record(node, [], reads, expr, conds, walrus=names)
        return bool(names)

    def _magics_in(self, node: ast.stmt, conds: set[str]) -> None:
        """Follow the dataflow through `%time y = x ** 2` and its kin: their code is
        analysed as if written on their line."""
        for sub in ast.walk(node):
            found = magic_code(sub)
            if found is None:
                continue
            name, code, tree, offset = found
            self.magic_offsets.setdefault(ast.dump(tree), offset)
            saved = self.segment, self.offset
            self.segment, self.offset = Segments(code), offset  # positions index its code
            try:
                if CODE_MAGICS[name]:
                    self._body(tree.body, conds)
                else:  # %timeit: reads the namespace, binds nothing in it
                    inner = _Analyser(code, frozenset(self.numeric_modules))
                    inner.offset = offset
                    inner._body(tree.body, conds)
                    for r in inner.reads:
                        if r not in self.binds:
                            self.reads[r] = None
                    for st in inner.statements:
                        self.statements.append(
                            Statement(st.lineno, (), st.reads, st.findings, st.conditions, st.text)
                        )
            finally:
                self.segment, self.offset = saved

    def _function_globals(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        """A function that declares `global g` binds g in the namespace when it is called:
        g is bound by the cell, computed from what the function reads."""
        declared = _declared_globals(node)
        if not declared:
            return
        reads = set(self.functions[node.name])
        names = sorted(declared)
        lineno = node.lineno + self.offset
        text = self.segment(node)
        self.statements.append(
            Statement(lineno, tuple(names), self._shared(reads), (), _NONE, text)
        )
        self._bind(names, lineno)

    def _shared(self, names: set[str] | frozenset[str]) -> frozenset[str]:
        """`names` as a frozenset, the same object for every statement with the same names."""
        frozen = frozenset(names)
        return self._frozen.setdefault(frozen, frozen)

    def _findings_only(self, value: ast.expr) -> None:
        self._find(value)

    def _bind(self, names: list[str], lineno: int) -> None:
        for n in names:
            self.binds[n] = None
            self.bind_lines.setdefault(n, []).append(lineno)

    def _walk(self, expr: ast.AST) -> list[ast.AST]:
        """Every node under `expr`; a statement's value is read and searched for culprits,
        so the last walk is kept (one walk of each expression, not two)."""
        if self._walked[0] is not expr:
            self._walked = (expr, _nodes(expr))
        return self._walked[1]

    def _read(self, expr: ast.AST) -> set[str]:
        """Names an expression reads; the first read of an unbound name is a namespace read.
        A walrus binds its name where it ends: later reads of it are the cell's own."""
        events = []  # (position, 0 read / 1 bind, name), in the order they are written
        for node in self._walk(expr):  # names inside lambdas and comprehensions count too
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                events.append(((node.lineno, node.col_offset), 0, node.id))
        for node in _walruses(expr) if self.has_walrus else ():
            events.append(((node.end_lineno, node.end_col_offset), 1, node.target.id))
        events.sort()
        called = [e for e in events if not e[1] and e[2] in self.functions]
        seen = {e[2] for e in called}
        resort = bool(called)
        while called:  # calling a function the cell defined reads what its body reads
            position, _, function = called.pop()
            for name in self.functions.get(function, ()):
                events.append((position, 0, name))
                if name in self.functions and name not in seen:
                    seen.add(name)
                    called.append((position, 0, name))
        if resort:
            events.sort()
        reads = set()
        for _, bind, name in events:
            if bind:
                self._bind([name], self.offset + (getattr(expr, "lineno", 0) or 0))
            else:
                reads.add(name)
                if name not in self.binds:
                    self.reads[name] = None
        return reads

    # -- what matters to a gradient -------------------------------------------------
    def _find(self, expr: ast.AST) -> list[Finding]:
        found = []
        for node in self._walk(expr):
            if type(node) not in _CLASSIFIED:  # the only nodes _classify has a word for
                continue
            if type(node) is ast.Call and not self.offset:
                self.call_lines.add(node.lineno)
            kind = self._classify(node)
            if kind:
                lineno = getattr(node, "lineno", 0) + self.offset
                found.append((lineno, node.col_offset, Finding(kind, lineno, self.segment(node))))
            if type(node) is not ast.Call:
                continue
            if _is_method_call(node, "gradient"):
                self.gradient_calls.append((node.func.value.id, node))
            if _is_method_call(node, "watch"):
                self.watch_calls.append((node.func.value.id, node))
        return [f for *_, f in sorted(found, key=lambda t: t[:2])]  # as written

    def _classify(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.FloorDiv):
            return "nondiff"
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            exp = node.right
            if not (
                isinstance(exp, ast.Constant) and isinstance(exp.value, int) and exp.value >= 0
            ):
                return "singular"
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            return "singular"
        if isinstance(node, ast.Compare):
            return "nondiff"
        if not isinstance(node, ast.Call):
            return None
        func = node.func
        if isinstance(func, ast.Name):
            if func.id in _LEAVE_BUILTINS:
                return "leave"
            return None
        if not isinstance(func, ast.Attribute):
            return None
        attr = func.attr
        root = _root_name(func)
        if "random" in dotted_name(func).split(".")[:-1]:  # tf.random.normal, np.random.rand
            return "random"
        if root in _LEAVE_MODULES or root in self.numeric_modules:
            return "leave"
        if attr in _LEAVE_METHODS:
            return "leave"
        if attr in _STATE_METHODS:
            return "state"
        if attr == "watch":
            return None
        if attr == "sign":
            return "sign"
        if attr in _NONDIFF:
            return "nondiff"
        dtype = node.args[1:2] + [k.value for k in node.keywords if k.arg == "dtype"]
        if attr == "cast" and any(_mentions_int_dtype(a) for a in dtype):
            return "cast_int"
        if attr == "where":
            return "where"
        if attr in _SINGULAR:
            return "singular"
        return None

    # -- the cell's own tapes: causes 4, 10, 13 and 15 of docs/diagnosis.md ------------
    def _watch_lints(self) -> list[Lint]:
        """docs/diagnosis.md#nothing-watched: with watch_accessed_variables=False only what is
        watched is recorded, and a layer's weight list is empty until its first call."""
        lints = []
        for tape_name, call in self.watch_calls:
            arg = call.args[0] if call.args else None
            if tape_name not in self.no_auto_watch or not isinstance(arg, ast.Attribute):
                continue
            if arg.attr in _WEIGHT_LISTS:
                text = self.segment(call)
                lints.append(
                    Lint(  # docs/diagnosis.md#nothing-watched
                        10,
                        call.lineno,
                        f"line {call.lineno}: {text} on a tape with "
                        f"watch_accessed_variables=False: a layer's {arg.attr} is empty until "
                        f"its first call builds it, so this watches nothing on a new layer and "
                        f"its gradients are None; call the layer once before the tape, or "
                        f"leave watch_accessed_variables on",
                    )
                )
        return lints

    def _lints(self) -> list[Lint]:
        lints = self._watch_lints()
        blocks = {t.name: t for t in self.tapes}
        for tape_name, call in self.gradient_calls:
            block = blocks.get(tape_name)
            line = call.lineno
            if call.args and isinstance(call.args[0], (ast.List, ast.Tuple)):
                n = len(call.args[0].elts)
                lints.append(
                    Lint(  # docs/diagnosis.md#summed-targets
                        15,
                        line,
                        f"line {line}: {tape_name}.gradient([...], ...) silently sums the "
                        f"gradients of its {n} targets; call gradient once per target, "
                        f"or use {tape_name}.jacobian",
                    )
                )
            if block is None:
                continue
            for outer in self.tapes:
                inside = outer.start < block.start and block.end <= outer.end
                if outer is not block and inside and line > outer.end:
                    lints.append(
                        Lint(  # docs/diagnosis.md#outer-tape-closed
                            13,
                            line,
                            f"line {line}: {tape_name}.gradient(...) runs after the block of "
                            f"tape {outer.name} (lines {outer.start}-{outer.end}) closed, so "
                            f"{outer.name} did not record it and a derivative of it taken "
                            f"with {outer.name} is None: indent line {line} into that block",
                        )
                    )
            if call.args and isinstance(call.args[0], ast.Name):
                y = call.args[0].id
                lines = [ln for ln in self.bind_lines.get(y, []) if ln < line]
                if lines and lines[-1] > block.end:
                    lints.append(
                        Lint(  # docs/diagnosis.md#target-after-tape
                            4,
                            line,
                            f"line {line}: {y} is computed on line {lines[-1]}, after the block "
                            f"of tape {tape_name} closed (line {block.end}), so the tape never "
                            f"saw it and {tape_name}.gradient({y}, ...) is None: compute {y} "
                            f"inside the with-block",
                        )
                    )
        return lints


_NONE: frozenset[str] = frozenset()
_WEIGHT_LISTS = {"trainable_variables", "trainable_weights", "variables", "weights"}
_CLASSIFIED = {ast.BinOp, ast.Compare, ast.Call}
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


def _mentions_int_dtype(node: ast.AST) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and sub.attr in _INT_DTYPES:
            return True
        if isinstance(sub, ast.Constant) and sub.value in _INT_DTYPES:
            return True
        if isinstance(sub, ast.Name) and sub.id in ("int", "bool"):
            return True
    return False


class Rewriter(ast.NodeTransformer):
    """Insert a `__tapemagic_bind__` call after every binding statement (and around every
    walrus's value) and wrap the cell's last expression in `__tapemagic_last__(...)` (it
    stays an expression, so IPython still displays it, unless `quiet`: a trailing `;`).

    Under IPython the rewriter sits among the shell's AST transformers for the cell's run,
    so the code a magic in the cell runs (`%time y = x ** 2`) comes through `visit` too,
    after the cell itself: it gets its hooks, numbered with the cell's line numbers.
    """

    def __init__(
        self,
        quiet: bool = False,
        magic_offsets: dict[str, int] | None = None,
        walrus: bool = True,
        watch: set[str] | None = None,
        every: bool = True,
        call_lines: set[int] | None = None,
    ) -> None:
        self.quiet = quiet
        # Which bindings get a hook: every one (the re-runs replace values through them);
        # else those of the names in `watch`, or, without `watch`, those whose value calls
        # something: only a call can make the Variable a cell creates (`w = x * 2` cannot).
        self.watch, self.every = watch, every
        self.call_lines = call_lines  # from the analysis: spares a walk of each statement
        self.walrus = walrus  # False: the cell has no `:=` (CellInfo.has_walrus)
        self.offset = 0  # added to hook line numbers inside a magic's code
        self._only: set[str] | None = None  # inside a function: its `global` names only
        self._seen_cell = False
        # ast.dump of a magic's code -> offset (CellInfo.magic_offsets; found here if None)
        self._magic_offsets = magic_offsets

    def visit_Module(self, node: ast.Module) -> ast.Module:
        with gc_paused():
            return self._module(node)

    def _module(self, node: ast.Module) -> ast.Module:
        if self._seen_cell:  # the code of a magic in the cell
            self.offset = (self._magic_offsets or {}).get(ast.dump(node), 0)
            node.body = self._body(node.body)
            return node
        self._seen_cell = True
        if self._magic_offsets is None:
            self._magic_offsets = {}
            for sub in ast.walk(node):
                found = magic_code(sub)
                if found is not None:
                    self._magic_offsets.setdefault(ast.dump(found[2]), found[3])
        node.body = self._body(node.body)
        if node.body and isinstance(node.body[-1], ast.Expr):
            last = node.body[-1]
            call = _located(
                ast.Call(_located(ast.Name(LAST_HOOK, _LOAD), last), [last.value], []), last
            )
            node.body[-1] = _located(ast.Expr(call), last)
            if self.quiet:  # the value is not the cell's last statement: nothing displayed
                node.body.append(_located(ast.Pass(), last))
        return node  # every node made here has its location: no fix_missing_locations pass

    def _body(self, body: list[ast.stmt]) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for node in body:
            self._walrus_hooks(node)
            self._descend(node)
            out.append(node)
            names = self._wanted(_bound_by(node), getattr(node, "value", None))
            if not names:
                continue
            if _single_name(node):  # `y = v` -> `y = hook(line, ("y",), (v,))[0]`
                node.value = _hooked_value(node, names[0], node.value, self.offset)
            else:  # a statement of its own after the binding
                out.append(_hook(node, names, self.offset))
        return out

    def _wanted(self, names: list[str], value: ast.AST | None = None) -> list[str]:
        """The names among `names` (bound from `value`) that get a hook."""
        if self._only is not None:
            names = [n for n in names if n in self._only]
        if self.watch is not None:
            return [n for n in names if n in self.watch]
        if self.every or value is None or not names:
            return names
        if self.call_lines is not None and not self.offset:
            lines = range(value.lineno, (value.end_lineno or value.lineno) + 1)
            calls = any(line in self.call_lines for line in lines)
        else:
            calls = any(type(n) in _CALLS for n in ast.walk(value))
        return names if calls else []

    def _walrus_hooks(self, node: ast.stmt) -> None:
        """`(n := value)` becomes `(n := __tapemagic_bind__(line, ("n",), (value,))[0])`."""
        if not self.walrus:
            return
        if isinstance(node, _COMPOUND):
            exprs = [getattr(node, f, None) for f in ("test", "iter", "subject")]
            exprs += [item.context_expr for item in getattr(node, "items", [])]
            exprs += [case.guard for case in getattr(node, "cases", [])]
        else:
            exprs = [node]
        for expr in exprs:
            for walrus in _walruses(expr) if expr is not None else []:
                name = walrus.target.id
                if self._wanted([name], walrus.value):
                    walrus.value = _hooked_value(walrus, name, walrus.value, self.offset)

    def _descend(self, node: ast.stmt) -> None:
        if isinstance(node, (ast.For, ast.AsyncFor)):
            loop_names = self._wanted(_target_names(node.target), node.iter)
            hook = [_hook(node, loop_names, self.offset)] if loop_names else []
            node.body = hook + self._body(node.body)
            node.orelse = self._body(node.orelse)
        elif isinstance(node, (ast.While, ast.If)):
            node.body = self._body(node.body)
            node.orelse = self._body(node.orelse)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            names = [n for item in node.items for n in _target_names(item.optional_vars)]
            names = self._wanted(names, node)
            node.body = ([_hook(node, names, self.offset)] if names else []) + self._body(node.body)
        elif isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
            node.body = self._body(node.body)
            for handler in node.handlers:
                handler.body = self._body(handler.body)
            node.orelse = self._body(node.orelse)
            node.finalbody = self._body(node.finalbody)
        elif type(node).__name__ == "Match":
            for case in node.cases:
                names = self._wanted(_pattern_names(case.pattern), node.subject)
                hook = [_hook(case.pattern, names, self.offset)] if names else []
                case.body = hook + self._body(case.body)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            declared = _declared_globals(node)
            if declared:  # `global g; g = ...` binds the cell's g when the function runs
                saved, self._only = self._only, declared
                try:
                    node.body = self._body(node.body)
                finally:
                    self._only = saved


_CALLS = {ast.Call, ast.Await}


def rewriter_for(info: CellInfo, watch: list[str] | None = None) -> Rewriter:
    """The rewriter for a cell already analysed (what it found spares the rewriter a
    search), hooking only the bindings a recording needs: those of the `watch` names, or,
    without them, those that may bind a Variable the cell creates."""
    watched = set(watch) if watch is not None else None
    return Rewriter(
        info.quiet, info.magic_offsets, info.has_walrus, watched, False, info.call_lines
    )


def _bound_by(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.Assign):
        return [n for t in node.targets for n in _target_names(t)]
    if isinstance(node, ast.AugAssign) or (isinstance(node, ast.AnnAssign) and node.value):
        return _target_names(node.target)
    return []


_LOAD, _STORE = ast.Load(), ast.Store()  # shared, as the parser shares them


def _located(new: ast.AST, node: ast.AST) -> ast.AST:
    """`new` at `node`'s place (what fix_missing_locations would do, without its walk over
    the whole tree: a 2,000-line cell pays for what is added, not for what is there)."""
    new.lineno, new.col_offset = node.lineno, node.col_offset
    new.end_lineno, new.end_col_offset = node.end_lineno, node.end_col_offset
    return new


def _single_name(node: ast.stmt) -> bool:
    """`y = v` or `y: T = v`: one plain name bound to one value."""
    if isinstance(node, ast.Assign):
        return len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
    return isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)


def _hooked_value(node: ast.AST, name: str, value: ast.expr, offset: int) -> ast.expr:
    """`__tapemagic_bind__(line, ("y",), (value,))[0]`: the value as the hook hands it back."""
    at = lambda new: _located(new, node)  # noqa: E731
    keys = at(ast.Tuple([at(ast.Constant(name))], _LOAD))
    values = at(ast.Tuple([value], _LOAD))
    line = at(ast.Constant(node.lineno + offset))
    call = at(ast.Call(at(ast.Name(BIND_HOOK, _LOAD)), [line, keys, values], []))
    return at(ast.Subscript(call, at(ast.Constant(0)), _LOAD))


def _hook(node: ast.AST, names: list[str], offset: int = 0) -> ast.stmt:
    """`a, b = __tapemagic_bind__(line, ("a", "b"), (a, b))`: the hook sees each value
    as it is bound and may hand back another (the finite-difference check does)."""
    at = lambda new: _located(new, node)  # noqa: E731
    unique = list(dict.fromkeys(names))
    values = at(ast.Tuple([at(ast.Name(n, _LOAD)) for n in unique], _LOAD))
    keys = at(ast.Tuple([at(ast.Constant(n)) for n in unique], _LOAD))
    line = at(ast.Constant(node.lineno + offset))
    call = at(ast.Call(at(ast.Name(BIND_HOOK, _LOAD)), [line, keys, values], []))
    store = at(ast.Tuple([at(ast.Name(n, _STORE)) for n in unique], _STORE))
    return at(ast.Assign(targets=[store], value=call))
