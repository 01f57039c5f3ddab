"""`%train`: a training panel built from names in the namespace.

A thin layer: names become the `Trainer`'s arguments, mistakes become one-line
`UsageError`s, and the panel is shown and kept in `_panel`.
"""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display

from tapemagic.jupyter.magics import split_names


@magics_class
class TrainMagics(Magics):
    """`%train` builds a `TrainingPanel` from names in the namespace."""

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
    @argument(
        "--resume",
        choices=("latest_valid", "False"),
        help="with --checkpoint-dir: latest_valid (skip damaged checkpoints) or False (start at 0)",
    )
    @argument("--seed", type=int, help="for reproducible shuffling")
    @argument(
        "--compare", metavar="OPT,OPT", help="copies side by side, e.g. sgd,momentum,adam:0.07"
    )
    @argument("--as", dest="as_name", metavar="NAME", help="also store the panel under NAME")
    @line_magic
    def train(self, line: str) -> None:
        """Build a training panel from names in the namespace and show it (also in `_panel`).

        %train --model model --loss loss_fn --data X,Y --optimizer adam --lr 0.07
        %train --params a,b --predict predict --loss loss_fn --data X,Y --lr 0.001
        %train --params a,b --predict predict --loss loss_fn --data X,Y --compare sgd:0.001,adam:.07
        """
        args = parse_argstring(self.train, line)
        if args.epochs < 1:
            raise UsageError(f"--epochs must be 1 or more, not {args.epochs}")
        ns = self.shell.user_ns

        def one(name: str | None, option: str) -> Any:
            if name is None:
                return None
            if name not in ns:
                raise UsageError(f"{option} {name}: no such name; define it first")
            return ns[name]

        def several(text: str | None, option: str) -> Any:
            names = split_names(text, option)
            if names is None:
                return None
            values = tuple(one(n, option) for n in names)
            return values[0] if len(values) == 1 else values

        loss = args.loss if args.loss is None or args.loss not in ns else ns[args.loss]
        kwargs = dict(
            model=one(args.model, "--model"),
            params=[one(n, "--params") for n in split_names(args.params, "--params") or []] or None,
            predict=one(args.predict, "--predict"),
            step=one(args.step, "--step"),
            loss=loss,
            data=several(args.data, "--data"),
            validation_data=several(args.val, "--val"),
            validation_split=args.val_split,
            optimizer=args.optimizer,
            learning_rate=args.lr,
            batch_size=args.batch_size,
            metrics=split_names(args.metrics, "--metrics"),
            device=args.device or "auto",
            checkpoint_dir=args.checkpoint_dir,
            resume={None: None, "False": False}.get(args.resume, args.resume),
            seed=args.seed,
        )
        from tapemagic.jupyter.panel import TrainingPanel

        try:
            given = {k: v for k, v in kwargs.items() if v is not None}
            if args.compare:
                panel = _compare_panel(args.compare, args.epochs, given)
            else:
                panel = TrainingPanel(epochs=args.epochs, **given)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise UsageError(f"%train: {_as_options(str(exc))}") from None
        ns["_panel"] = panel
        if args.as_name:
            ns[args.as_name] = panel
        display(panel)


def _compare_panel(optimizers: str, epochs: int, given: dict) -> Any:
    """`%train --compare`: a ComparePanel; the learning rate is for entries without one."""
    from tapemagic.jupyter.compare_panel import compare

    if "optimizer" in given:
        raise ValueError("give --compare or --optimizer, not both")
    return compare(optimizers, epochs=epochs, learning_rate=given.pop("learning_rate", None),
                   **given)  # fmt: skip


# The Trainer's messages name its keyword arguments; %train users type options instead.
_OPTION_SPELLING = {
    "resume='latest_valid'": "--resume latest_valid",
    "resume=False": "--resume False",
    "another checkpoint_dir": "another --checkpoint-dir",
}


def _as_options(message: str) -> str:
    for keyword, option in _OPTION_SPELLING.items():
        message = message.replace(keyword, option)
    return message
