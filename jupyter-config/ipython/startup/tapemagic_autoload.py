# tapemagic: declare %%tape, %grad and %train in every IPython of this environment.
# The magics are registered lazily: nothing (TensorFlow least of all) is imported until
# one of them is first used. Set TAPEMAGIC_AUTOLOAD=0 to turn this off; `%load_ext
# tapemagic` keeps working either way.


def _tapemagic_autoload() -> None:
    import inspect
    import os

    if os.environ.get("TAPEMAGIC_AUTOLOAD", "1").strip().lower() in ("0", "false", "no", "off"):
        return
    from IPython import get_ipython

    shell = get_ipython()
    manager = getattr(shell, "magics_manager", None)
    if manager is None or not hasattr(manager, "register_lazy"):  # IPython < 8.1
        return
    # Only the kinds that exist: %%tape is a cell magic, %grad and %train line magics.
    # IPython versions whose register_lazy takes a magic_kind list a lazy name under
    # that kind only; without the argument, they declare both kinds (and %lsmagic and
    # Tab would offer %tape, %%grad and %%train, which then fail to load). Older ones
    # (before the argument existed) keep a lazy name out of %lsmagic and completion
    # until it is loaded, so the bare call is the best they allow.
    kinds = {"tape": "cell", "grad": "line", "train": "line"}
    takes_kind = "magic_kind" in inspect.signature(manager.register_lazy).parameters
    for name, kind in kinds.items():
        if takes_kind:
            manager.register_lazy(name, "tapemagic", magic_kind=kind)
        else:
            manager.register_lazy(name, "tapemagic")


_tapemagic_autoload()
del _tapemagic_autoload
