"""The cell as it runs under %%tape (no TensorFlow here): a hook call after every binding,
so a name bound inside the cell can be watched from the moment it exists, and a wrapper around
the last expression (`BIND_HOOK`, `LAST_HOOK`), which stays an expression so IPython still
displays it. The rewriter sits among IPython's AST transformers for the cell's run, so the code
a magic in the cell runs gets its hooks too; `rewriter_for` uses what `analysis` found to hook
only the bindings a recording needs.
"""

from __future__ import annotations

import ast

from tapemagic.tape.analysis import CellInfo
from tapemagic.tape.syntax import (
    _COMPOUND,
    _declared_globals,
    _pattern_names,
    _target_names,
    _walruses,
    gc_paused,
    magic_code,
)

BIND_HOOK = "__tapemagic_bind__"
LAST_HOOK = "__tapemagic_last__"


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
