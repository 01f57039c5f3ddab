# tapemagic: declare %%tape, %grad and %train in every IPython of this environment.
# The magics are registered lazily: nothing (TensorFlow least of all) is imported until
# one of them is first used. Set TAPEMAGIC_AUTOLOAD=0 to turn this off; `%load_ext
# tapemagic` keeps working either way.


def _tapemagic_autoload() -> None:
    import os

    if os.environ.get("TAPEMAGIC_AUTOLOAD", "1").strip().lower() in ("0", "false", "no", "off"):
        return
    from IPython import get_ipython

    shell = get_ipython()
    manager = getattr(shell, "magics_manager", None)
    if manager is None or not hasattr(manager, "register_lazy"):  # IPython < 8.1
        return
    for name in ("tape", "grad", "train"):
        manager.register_lazy(name, "tapemagic")


_tapemagic_autoload()
del _tapemagic_autoload
