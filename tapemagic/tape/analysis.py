"""What a cell reads, binds and does on the way, from its AST alone (no TensorFlow here):
which names the cell reads from the namespace, which it binds, and for each statement the
constructs that break or poison a gradient (`.numpy()`, `argmax`, `assign`, `tf.where`...), so
a diagnosis can name the cell line; the dataflow between the names (`CellInfo.depends_on`,
`CellInfo.path`) and the mistakes in the cell's own tapes (`Lint`). Analyses are cached: a
cell is often re-run unchanged. The rewrite the cell runs is in `rewrite`, the syntax both
read in `syntax`.
"""

from __future__ import annotations

import ast
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from tapemagic.tape.syntax import (
    _COMPOUND,
    CODE_MAGICS,
    Segments,
    _declared_globals,
    _free_names,
    _is_method_call,
    _is_tape_ctor,
    _nodes,
    _pattern_names,
    _pos,
    _root_name,
    _target_names,
    _walruses,
    dotted_name,
    ends_quiet,
    gc_paused,
    magic_code,
    walrus_names,
)

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


def _mentions_int_dtype(node: ast.AST) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and sub.attr in _INT_DTYPES:
            return True
        if isinstance(sub, ast.Constant) and sub.value in _INT_DTYPES:
            return True
        if isinstance(sub, ast.Name) and sub.id in ("int", "bool"):
            return True
    return False
