"""The IPython layer: `%%tape` and `%grad` parse their arguments and call the core.

Argument mistakes become one-line `UsageError`s. The cell itself runs through
`shell.run_cell`, so its prints, displayed value, syntax errors and tracebacks look
exactly as they would without the magic.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display

MAGIC_NAMES = {"cell": ["tape"], "line": ["grad", "train"]}


def register(shell) -> None:
    shell.register_magics(TapeMagics)


def unregister(shell) -> None:
    magics = shell.magics_manager.magics
    for kind, names in MAGIC_NAMES.items():
        for name in names:
            magics[kind].pop(name, None)
    shell.magics_manager.registry.pop("TapeMagics", None)


def _names(text: str | None, option: str) -> list[str] | None:
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

        Sources (default): every float tensor or Variable the cell reads from the
        namespace, plus Variables the cell creates. Targets (default): every name the
        cell binds to a float tensor, else the value of its last expression.
        """
        args = parse_argstring(self.tape, line)
        from tapemagic.tapecell import TapeError, TapeOptions, tape_cell

        options = TapeOptions(
            watch=_names(args.watch, "--watch"),
            targets=_names(args.target, "--target"),
            order=args.order,
            jacobian=args.jacobian,
            hessian=args.hessian,
            check=args.check,
            plot=args.plot,
            device=args.device,
        )
        for name in (args.persistent, args.as_name):
            if name is not None and not name.isidentifier():
                raise UsageError(f"{name!r} is not a valid name to store into")
        shell = self.shell
        code = shell.transform_cell(cell)
        try:
            result = tape_cell(code, shell.user_ns, options, _executor(shell, cell))
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

        %grad EXPR [--wrt x,y] [--at x=4.0,y=1] [-o N] [--check] [--plot] [--jacobian] [-q]

        `--wrt` defaults to the float names EXPR reads; `--at` sets values for this
        evaluation only. Returns the derivative of order N (a tensor), a tuple of them
        for several --wrt names, or the Jacobian with --jacobian:

            g = %grad x**2 --at x=4      # g == 8.0
        """
        expr, opts = _split_grad_line(line)
        args = parse_argstring(self.grad, opts)
        if not expr.strip():
            raise UsageError("%grad needs an expression: %grad x**2 --at x=4")
        try:
            ast.parse(expr, mode="eval")
        except SyntaxError as exc:
            raise UsageError(f"%grad: {expr!r} is not a Python expression ({exc.msg})") from None
        from tapemagic.tapecell import TapeError, TapeOptions, tape_cell

        namespace = self.shell.user_ns
        at = _parse_at(args.at)
        wrt = _names(args.wrt, "--wrt") or _default_wrt(expr, namespace, at)
        options = TapeOptions(
            watch=wrt,
            order=args.order,
            jacobian=args.jacobian,
            check=args.check,
            plot=args.plot,
            device=args.device,
            overrides=at,
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

    @magic_arguments()
    @argument("--model", metavar="NAME", help="a Keras model")
    @argument("--params", metavar="a,b", help="Variables to train (with --predict)")
    @argument("--predict", metavar="NAME", help="forward function: predict(X) -> Y")
    @argument("--step", metavar="NAME", help="your train_step(x, y): updates, returns the loss")
    @argument("--loss", metavar="NAME", help="a loss function's name here, or a Keras loss name")
    @argument("--data", metavar="X,Y", help="training data: X,Y arrays or one tf.data.Dataset")
    @argument("--val", metavar="X,Y", help="validation data")
    @argument("--val-split", type=float, metavar="F", help="hold out this fraction instead")
    @argument(
        "--optimizer", metavar="NAME", help="sgd, momentum, adam, rmsprop, adagrad, or a name"
    )
    @argument("--lr", type=float, metavar="RATE", help="learning rate")
    @argument("--batch-size", type=int, metavar="N", help="samples per step (default: all)")
    @argument("--epochs", type=int, default=100, metavar="N", help="epochs per press of Train")
    @argument("--metrics", metavar="m1,m2", help="Keras metric names")
    @argument("--device", metavar="D", help="auto, CPU, GPU, GPU:1")
    @argument("--checkpoint-dir", metavar="PATH", help="save and resume here")
    @argument("--seed", type=int, help="for reproducible shuffling")
    @argument("--as", dest="as_name", metavar="NAME", help="also store the panel under NAME")
    @line_magic
    def train(self, line: str) -> None:
        """Build a training panel from names in the namespace and show it (also in `_panel`).

        %train --model model --loss loss_fn --data X,Y --optimizer adam --lr 0.07
        %train --params a,b --predict predict --loss loss_fn --data X,Y --lr 0.001
        """
        args = parse_argstring(self.train, line)
        ns = self.shell.user_ns

        def one(name: str | None, option: str) -> Any:
            if name is None:
                return None
            if name not in ns:
                raise UsageError(f"{option} {name}: no such name; define it first")
            return ns[name]

        def several(text: str | None, option: str) -> Any:
            names = _names(text, option)
            if names is None:
                return None
            values = tuple(one(n, option) for n in names)
            return values[0] if len(values) == 1 else values

        loss = args.loss if args.loss is None or args.loss not in ns else ns[args.loss]
        kwargs = dict(
            model=one(args.model, "--model"),
            params=[one(n, "--params") for n in _names(args.params, "--params") or []] or None,
            predict=one(args.predict, "--predict"),
            step=one(args.step, "--step"),
            loss=loss,
            data=several(args.data, "--data"),
            validation_data=several(args.val, "--val"),
            validation_split=args.val_split,
            optimizer=args.optimizer,
            learning_rate=args.lr,
            batch_size=args.batch_size,
            metrics=args.metrics.split(",") if args.metrics else None,
            device=args.device or "auto",
            checkpoint_dir=args.checkpoint_dir,
            seed=args.seed,
        )
        from tapemagic.panel import TrainingPanel

        try:
            panel = TrainingPanel(
                epochs=args.epochs, **{k: v for k, v in kwargs.items() if v is not None}
            )
        except (ValueError, TypeError, RuntimeError) as exc:
            raise UsageError(f"%train: {exc}") from None
        ns["_panel"] = panel
        if args.as_name:
            ns[args.as_name] = panel
        display(panel)

    def _store(self, result, as_name: str | None) -> None:
        self.shell.user_ns["_tape"] = result
        if as_name:
            self.shell.user_ns[as_name] = result


_OPTION_START = re.compile(
    r"(?:^|\s)(?=(?:--(?:wrt|at|order|check|plot|jacobian|device|quiet)\b|-[oq]\b))"
)


def _split_grad_line(line: str) -> tuple[str, str]:
    match = _OPTION_START.search(line)
    if match is None:
        return line, ""
    return line[: match.start()], line[match.end() :]


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
        try:
            literal = ast.literal_eval(value.strip())
            values[name] = tf.constant(literal, dtype=tf.float32)
        except (ValueError, SyntaxError, TypeError):
            raise UsageError(
                f"--at {name}={value.strip()}: not a number or list of numbers; "
                f"write e.g. --at {name}=4.0"
            ) from None
    return values


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

    from tapemagic.cellcode import analyse
    from tapemagic.recording import is_float_tensor

    reads = analyse(expr).reads
    wrt = [
        n
        for n in reads
        if n in at
        or is_float_tensor(namespace.get(n))
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


def _executor(shell, raw_cell: str):
    """Run the raw cell through IPython with the rewriter as an AST transformer."""

    def execute(rewriter) -> bool:
        outer = shell.displayhook.exec_result
        shell.ast_transformers.append(rewriter)
        try:
            inner = shell.run_cell(raw_cell, store_history=False)
        finally:
            if rewriter in shell.ast_transformers:
                shell.ast_transformers.remove(rewriter)
            shell.displayhook.exec_result = outer
        if inner.success:
            return True
        if outer is not None:  # the notebook marks the cell failed, as a plain cell's
            outer.error_in_exec = inner.error_in_exec or inner.error_before_exec
        return False

    return execute
