"""The IPython layer: `%%tape` and `%grad` parse their arguments and call the core
(`%train` is in `train_magic.py`).

Argument mistakes become one-line `UsageError`s. The cell itself runs through
`shell.run_cell`, so its prints, displayed value, syntax errors and tracebacks look
exactly as they would without the magic. Loading the extension also registers how a
`TapeResult` looks (`display.render`) with the shell's display formatters: the core
result is plain data and never imports the display layer.
"""

from __future__ import annotations
import __future__

import argparse
import ast
import contextlib
import re
import types
from collections.abc import Callable, Iterator
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display
from IPython.utils.capture import capture_output

MAGIC_NAMES = {"cell": ["tape"], "line": ["grad", "train"]}
# Named, not imported: registering the formatters imports neither the core nor NumPy.
RESULT_TYPE = "tapemagic.tape.result.TapeResult"


def register(shell) -> None:
    """Register the magics and the `TapeResult` formatters (on `%load_ext`, and when the
    auto-load file's lazily declared magics are first used, which loads the extension)."""
    from tapemagic.jupyter.train_magic import TrainMagics

    shell.register_magics(TapeMagics, TrainMagics)
    module, name = RESULT_TYPE.rsplit(".", 1)
    for mime, format_result in _FORMATS.items():
        shell.display_formatter.formatters[mime].for_type_by_name(module, name, format_result)


def unregister(shell) -> None:
    manager = shell.magics_manager
    for name in {n for names in MAGIC_NAMES.values() for n in names}:
        # Every kind: a lazy declaration without a kind (older auto-load files, IPython's
        # default) put a placeholder under both, and unloading removes that as well.
        for table in manager.magics.values():
            if _ours(table.get(name)):
                del table[name]
        getattr(manager, "lazy_magics", {}).pop(name, None)
    # IPython remembers a lazily loaded spec and never loads it again: forget it, so that
    # declaring the magics lazily after an unload (the auto-load file again) loads them.
    loaded = getattr(manager, "_loaded_lazy", None)
    if isinstance(loaded, set):
        loaded.discard("tapemagic")
    for name in ("TapeMagics", "TrainMagics"):
        shell.magics_manager.registry.pop(name, None)
    for mime in _FORMATS:
        shell.display_formatter.formatters[mime].pop(RESULT_TYPE, None)


def _ours(entry: Any) -> bool:
    """A magic tapemagic registered, or declared lazily (never resolving a placeholder:
    any attribute it lacks would load what it stands for)."""
    if entry is None:
        return False
    if type(entry).__name__ == "LazyMagic":
        return str(vars(entry).get("spec", "")).split(".")[0].split(":")[0] == "tapemagic"
    owner = getattr(entry, "__self__", None) if isinstance(entry, types.MethodType) else None
    return type(owner).__module__.startswith("tapemagic.")


# The formatters import the renderer on first use, so that loading the extension stays cheap.
def _html(result) -> str:
    from tapemagic.display import render

    return render.to_html(result)


def _markdown(result) -> str:
    from tapemagic.display import render

    return render.to_markdown(result)


def _pretty(result, p, cycle: bool) -> None:
    """text/plain, in IPython's pretty-printer protocol: the aligned table of `to_text`."""
    from tapemagic.display import render

    p.text("TapeResult(...)" if cycle else render.to_text(result))


_FORMATS = {"text/html": _html, "text/markdown": _markdown, "text/plain": _pretty}


def split_names(text: str | None, option: str) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if not n.isidentifier()]
    if bad or not names:
        raise UsageError(
            f"{option} takes comma-separated names like a,b; {', '.join(bad) or 'none'} "
            "is not a name"
        )
    return names


@magics_class
class TapeMagics(Magics):
    """`%%tape` runs a cell under watched tapes; `%grad` differentiates one expression."""

    @magic_arguments()
    @argument("-w", "--watch", metavar="a,b", help="differentiate with respect to these names")
    @argument("-t", "--target", metavar="y,loss", help="these targets only")
    @argument("-o", "--order", type=int, default=1, help="derivatives up to order N (1 to 4)")
    @argument(
        "--all",
        dest="all_pairs",
        action="store_true",
        help="every target with respect to every source read, not only the defaults",
    )
    @argument("--jacobian", action="store_true", help="full Jacobian of non-scalar targets")
    @argument("--hessian", action="store_true", help="Hessian of scalar targets")
    @argument(
        "--persistent",
        nargs="?",
        const="tape",
        metavar="NAME",
        help="keep the tape in the namespace (default name: tape)",
    )
    @argument("--check", action="store_true", help="compare with central finite differences")
    @argument("--plot", action="store_true", help="plot the target and its tangent line")
    @argument("--device", metavar="D", help="run the cell under tf.device(D), e.g. CPU or GPU:0")
    @argument("--as", dest="as_name", metavar="NAME", help="also store the result under NAME")
    @argument("-q", "--quiet", action="store_true", help="store the result, render nothing")
    @cell_magic
    def tape(self, line: str, cell: str) -> None:
        """Run the cell inside watched GradientTapes and render the derivatives of what it
        computed with respect to what it read. The result is stored in `_tape`.

        Sources (default): the Variables the cell reads, by name or through objects
        (`b.w`, `ws[0]`, `model.layers[0].kernel`) or creates; when it reads none, every
        float tensor it reads. Targets (default): the scalar float tensors the cell binds
        (a loss); when it binds none, every float tensor it binds, else the value of its
        last expression. --all: every target with respect to every source.
        """
        args = parse_argstring(self.tape, strip_comment(line))
        from tapemagic.tape.tapecell import TapeError, TapeOptions, tape_cell

        options = TapeOptions(
            watch=split_names(args.watch, "--watch"),
            targets=split_names(args.target, "--target"),
            order=args.order,
            all_pairs=args.all_pairs,
            jacobian=args.jacobian,
            hessian=args.hessian,
            check=args.check,
            plot=args.plot,
            device=args.device,
            silence_reruns=capture_output,
        )
        for name in (args.persistent, args.as_name):
            if name is not None and not name.isidentifier():
                raise UsageError(f"{name!r} is not a valid name to store into")
        shell = self.shell
        code = shell.transform_cell(cell)
        try:
            result = tape_cell(code, shell.user_ns, options, _executor(shell, cell, code))
        except TapeError as exc:
            raise UsageError(str(exc)) from None
        if result is None:
            return  # the cell failed: IPython has shown its error
        self._store(result, args.as_name)
        if args.persistent:
            shell.user_ns[args.persistent] = result.tape
        if not args.quiet:
            display(result)

    @magic_arguments()
    @argument("--wrt", metavar="x,y", help="sources (default: the float names EXPR reads)")
    @argument("--at", metavar="x=4.0,y=1", help="values for this evaluation only")
    @argument("-o", "--order", type=int, default=1, help="return the derivative of order N")
    @argument("--check", action="store_true", help="compare with central finite differences")
    @argument("--plot", action="store_true", help="plot the expression and its tangent line")
    @argument("--jacobian", action="store_true", help="return the full Jacobian")
    @argument("--device", metavar="D", help="evaluate under tf.device(D)")
    @argument("-q", "--quiet", action="store_true", help="render nothing, just return")
    @line_magic
    def grad(self, line: str) -> Any:
        """Differentiate one expression and return the derivative.

        %grad EXPR [options]: the options below follow the expression.

        `--wrt` defaults to the float names EXPR reads; `--at` sets values for this
        evaluation only. Returns the derivative of order N (a tensor), a tuple of them
        for several --wrt names, or the Jacobian with --jacobian:

            g = %grad x**2 --at x=4      # g == 8.0
        """
        expr, opts = split_options(strip_comment(line), _GRAD_OPTIONS)
        args = parse_argstring(self.grad, opts)
        if not expr.strip():
            raise UsageError("%grad needs an expression: %grad x**2 --at x=4")
        try:
            ast.parse(expr, mode="eval")
        except SyntaxError as exc:
            raise UsageError(f"%grad: {expr!r} is not a Python expression ({exc.msg})") from None
        from tapemagic.tape.tapecell import TapeError, TapeOptions, tape_cell

        namespace = self.shell.user_ns
        if args.jacobian and args.order != 1:
            raise UsageError(
                "%grad: --jacobian gives first derivatives; drop -o, or use "
                "%%tape --hessian for second derivatives"
            )
        at = _parse_at(args.at)
        wrt = split_names(args.wrt, "--wrt") or _default_wrt(expr, namespace, at)
        options = TapeOptions(
            watch=wrt,
            order=args.order,
            jacobian=args.jacobian,
            check=args.check,
            plot=args.plot,
            device=args.device,
            overrides=at,
            silence_reruns=capture_output,
        )
        try:
            result = tape_cell(expr, namespace, options)
        except TapeError as exc:
            raise UsageError(str(exc)) from None
        except Exception as exc:  # the expression itself failed
            raise UsageError(
                f"%grad: evaluating {expr!r} raised {type(exc).__name__}: {exc}"
            ) from None
        self._store(result, None)
        if not args.quiet:
            display(result)
        return _grad_value(result, args)

    def _store(self, result, as_name: str | None) -> None:
        self.shell.user_ns["_tape"] = result
        if as_name:
            self.shell.user_ns[as_name] = result


def option_start(parser: argparse.ArgumentParser) -> re.Pattern:
    """Where a magic's options begin in a line: any of `parser`'s option strings, as a
    word of its own (`--at x=1`, `--at=1`, `-q`), so `x - 2` or `x-o` stay expression."""
    names = sorted(parser._option_string_actions, key=len, reverse=True)
    return re.compile(rf"(?:^|\s)(?=(?:{'|'.join(map(re.escape, names))})(?![\w-]))")


def strip_comment(line: str) -> str:
    """The line without a trailing `# comment` (a `#` inside a string literal stays), as
    Python reads any line: `g = %grad x**2 --at x=4  # 8.0`."""
    quote = ""
    i = 0
    while i < len(line):
        ch = line[i]
        if quote:
            if ch == "\\":
                i += 1  # the escaped character cannot close the string
            elif line.startswith(quote, i):
                i += len(quote) - 1
                quote = ""
        elif ch == "#":
            return line[:i].rstrip()
        elif ch in "'\"":
            quote = ch * 3 if line.startswith(ch * 3, i) else ch
            i += len(quote) - 1
        i += 1
    return line


def split_options(line: str, start: re.Pattern) -> tuple[str, str]:
    """`EXPR --opt ...` -> (EXPR, "--opt ..."): the expression ends where the first option
    (found by `start`, from `option_start`) begins."""
    match = start.search(line)
    if match is None:
        return line, ""
    return line[: match.start()], line[match.end() :]


# %grad's options, from its own parser: an option added to the magic is recognised here too.
_GRAD_OPTIONS = option_start(TapeMagics.grad.parser)


def _parse_at(text: str | None) -> dict[str, Any]:
    """`x=4.0,y=1` -> float32 tensors; numbers or (nested) lists of numbers."""
    if not text:
        return {}
    import tensorflow as tf

    values = {}
    for part in _split_top_level(text):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier() or not value.strip():
            raise UsageError(f"--at expects NAME=NUMBER[,NAME=NUMBER...], got {part.strip()!r}")
        if name in values:
            raise UsageError(f"--at gives {name} twice; give each name once")
        try:
            literal = ast.literal_eval(value.strip())
            if any(isinstance(v, bool) for v in _flatten(literal)):
                raise ValueError("a bool")
            values[name] = tf.constant(literal, dtype=tf.float32)
        except (ValueError, SyntaxError, TypeError):
            raise UsageError(
                f"--at {name}={value.strip()}: not a number or list of numbers; "
                f"write e.g. --at {name}=4.0"
            ) from None
    return values


def _flatten(value: Any) -> list:
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _flatten(v)]
    return [value]


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets, so --at w=[1,2],b=0 works."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch in "[(" and 1 or (ch in "])" and -1 or 0)
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in parts if p.strip()]


def _default_wrt(expr: str, namespace: dict, at: dict[str, Any]) -> list[str]:
    import numpy as np

    from tapemagic.tape.analysis import analyse
    from tapemagic.tape.recording import is_float_tensor
    from tapemagic.variables import unwrap

    reads = analyse(expr).reads
    wrt = [
        n
        for n in reads
        if n in at
        or is_float_tensor(unwrap(namespace.get(n)))
        or isinstance(namespace.get(n), (float, np.floating))
        or (isinstance(namespace.get(n), np.ndarray) and namespace[n].dtype.kind == "f")
    ]
    if not wrt:
        raise UsageError(
            f"%grad: {expr!r} reads no float value to differentiate with respect to; "
            "name one with --wrt x or set it with --at x=4.0"
        )
    return wrt


def _grad_value(result, args) -> Any:
    target = result.targets[0] if result.targets else None
    kind = "jacobian" if args.jacobian else "gradient"
    values = []
    for source in result.sources:
        d = result.find(target, source, 1 if args.jacobian else args.order, kind)
        if d is None and kind == "jacobian":  # a scalar target: its Jacobian is its gradient
            d = result.find(target, source, 1)
        values.append(None if d is None else d.value)
    return values[0] if len(values) == 1 else tuple(values)


def _executor(shell, raw_cell: str, transformed: str):
    """Run the raw cell through IPython with the rewriter applied to its AST.

    Two of the shell's steps are replaced for this one run (and put back after):
    `transform_cell` hands back `transformed`, already made for the analysis, instead of
    transforming the cell a second time (any other text, a magic's code, as usual);
    `transform_ast` applies the rewriter (to the cell, and to the code a magic in it runs)
    before the shell's own AST transformers, if any. Registered among those, the rewriter
    would cost IPython's `fix_missing_locations` walk over the whole tree, which the
    rewriter does not need (it places every node it adds), and an error in it would be
    turned into a warning and a cell run without hooks. When the analysis parsed the cell,
    the shell's compiler is handed that parse instead of parsing the same text again."""

    def execute(rewriter, tree=None) -> bool:
        outer = shell.displayhook.exec_result
        if shell.compile.flags & _BARRY_AS_FLUFL:  # the one __future__ that changes the
            tree = None  # grammar: the compiler's own parse, under its flags

        def transform_cell(original):
            return lambda raw: transformed if raw == raw_cell else original(raw)

        def ast_parse(original):
            def parse(source, *args, **kwargs):
                nonlocal tree
                if tree is None or source != transformed:
                    return original(source, *args, **kwargs)
                given, tree = tree, None  # once: a second run of the text parses it anew
                return given

            return parse

        def transform_ast(original):
            def apply(node):
                node = rewriter.visit(node)
                return original(node) if shell.ast_transformers else node

            return apply

        try:
            with (
                _instead(shell, "transform_cell", transform_cell),
                _instead(shell, "transform_ast", transform_ast),
                _instead(shell.compile, "ast_parse", ast_parse),
            ):
                inner = shell.run_cell(raw_cell, store_history=False)
        finally:
            shell.displayhook.exec_result = outer
        if inner.success:
            return True
        if outer is not None:  # the notebook marks the cell failed, as a plain cell's
            outer.error_in_exec = inner.error_in_exec or inner.error_before_exec
        return False

    return execute


_BARRY_AS_FLUFL = __future__.barry_as_FLUFL.compiler_flag


@contextlib.contextmanager
def _instead(shell, name: str, make: Callable[[Any], Any]) -> Iterator[None]:
    """`shell.<name>` is `make(original)` inside the block, the original again after."""
    own = name in vars(shell)
    original = getattr(shell, name)
    setattr(shell, name, make(original))
    try:
        yield
    finally:
        if own:
            setattr(shell, name, original)
        else:
            delattr(shell, name)
