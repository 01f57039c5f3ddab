"""One owner per set of variables: the newest trainer made on them.

Two trainers updating the same variables from two threads interleave their steps and
corrupt both runs, and a notebook makes that easy (re-run the cell that made a panel,
press Train). So a new trainer takes its variables over: a run of an older trainer on any
of them is stopped between steps (its `request_stop` and `wait`: nothing half-applied),
the older one is marked superseded and refuses to run again, naming its successor, and
whoever watches it (a panel) is told. Owners are held weakly and keyed by the ids of the
underlying tf.Variables (Keras 3 Variables unwrapped), so a dropped trainer or variable
is forgotten (swept at the next claim). Thread-safe: a trainer may be made while another
runs elsewhere.
"""

from __future__ import annotations

import inspect
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from tapemagic.variables import unwrap


class Owner(Protocol):
    """What the registry needs of a trainer: stop a run between steps, wait for its end."""

    @property
    def running(self) -> bool: ...

    def request_stop(self) -> None: ...

    def wait(self, timeout: float | None = None) -> bool: ...


@dataclass(frozen=True)
class Supersession:
    """What an older owner learns when a newer one takes (some of) its variables."""

    new: Any  # the owner that took them
    label: str | None  # how the code that made it described it, e.g. "the panel in cell [7]"
    was_running: bool  # a run of the older owner was stopped for it

    def describe(self) -> str:
        """'the panel in cell [7]', or 'a newer Trainer' when no label was given."""
        return self.label or "a newer Trainer"


class _Record:
    """The registry's notes on one live owner."""

    def __init__(self) -> None:
        self.superseded: Supersession | None = None
        self.watchers: list[Callable[[Supersession], Any]] = []
        self.thread: int | None = None  # the thread of its latest run (set by `check`)


_lock = threading.RLock()
_variables: dict[int, tuple[weakref.ref, weakref.ref]] = {}  # id -> (variable, owner)
_records: dict[int, tuple[weakref.ref, _Record]] = {}  # id(owner) -> (owner, its record)
_labels = threading.local()


@contextmanager
def labelled(label: str) -> Iterator[None]:
    """Owners made in this thread inside the block are described as `label` to those they
    supersede (a panel says "the panel in cell [7]" around the Trainer it makes)."""
    before = getattr(_labels, "value", None)
    _labels.value = label
    try:
        yield
    finally:
        _labels.value = before


def _keys(variables: Iterable[Any]) -> list[tuple[int, Any]]:
    return [(id(v), v) for v in (unwrap(x) for x in variables)]


def _owners_of(variables: Iterable[Any], but: Any) -> list[Any]:
    """Live owners of any of `variables` other than `but`, oldest first; lock held."""
    found: dict[int, Any] = {}
    for key, var in _keys(variables):
        entry = _variables.get(key)
        if entry is None or entry[0]() is not var:  # an id reused by a new variable
            continue
        owner = entry[1]()
        if owner is not None and owner is not but:
            found.setdefault(id(owner), owner)
    return list(found.values())


def _stop(owners: Iterable[Owner]) -> None:
    """Stop each owner's run between steps and wait for its end. Called without the lock:
    a run's last step may need other threads to finish."""
    here = threading.get_ident()
    for owner in owners:
        owner.request_stop()
        with _lock:
            record = _find(owner)
            inside = record is not None and record.thread == here and owner.running
        if not inside:  # made from the old run's own thread (a callback): it stops after
            owner.wait()


def stop_owners(variables: Iterable[Any], new: Any) -> None:
    """Stop runs of other owners of `variables` now, before `new` reads or writes them
    (its starting weights, a checkpoint it resumes); they are superseded by `claim`."""
    with _lock:
        owners = _owners_of(variables, new)
    _stop(owners)


def claim(owner: Owner, variables: Iterable[Any]) -> list[Supersession]:
    """Make `owner` the owner of `variables`: every other owner of any of them is stopped,
    marked superseded and its watchers told (in this thread). Returns what was told."""
    variables = list(variables)
    label = getattr(_labels, "value", None)
    with _lock:
        _sweep()
        olds = _owners_of(variables, owner)
        _record_of(owner)
        ref = weakref.ref(owner)
        for key, var in _keys(variables):
            _variables[key] = (weakref.ref(var), ref)
        # Marked before they are stopped: a run an old owner starts meanwhile is refused
        # by `check` (which a run calls once it is marked running), never left going.
        told, watchers = [], []
        for old in olds:
            record = _record_of(old)
            record.superseded = Supersession(owner, label, old.running)
            told.append(record.superseded)
            watchers.append(list(record.watchers))
    _stop(olds)
    for event, fns in zip(told, watchers, strict=True):
        for fn in fns:
            fn(event)
    return told


def _find(owner: Any) -> _Record | None:
    """The owner's record; lock held. Checked against the owner itself: an id can be
    reused by a new object once the old one is gone."""
    entry = _records.get(id(owner))
    return entry[1] if entry is not None and entry[0]() is owner else None


def _record_of(owner: Any) -> _Record:
    """The owner's record, made on first use; lock held."""
    record = _find(owner)
    if record is None:
        record = _Record()
        _records[id(owner)] = (weakref.ref(owner), record)
    return record


def _sweep() -> None:
    """Drop what dead owners and variables left; lock held. Done here rather than in
    weakref callbacks, which a garbage collection may run in the middle of a lookup."""
    for key, (ref, _) in list(_records.items()):
        if ref() is None:
            del _records[key]
    for key, (var, own) in list(_variables.items()):
        if var() is None or own() is None:
            del _variables[key]


def superseded(owner: Any) -> Supersession | None:
    """How `owner` lost its variables, or None while it owns them."""
    with _lock:
        record = _find(owner)
        return record.superseded if record else None


def check(owner: Any) -> None:
    """Refuse, in one line, to run an owner that a newer one superseded. A run calls it
    from its own thread as it starts."""
    with _lock:
        record = _record_of(owner)
        record.thread = threading.get_ident()
        event = record.superseded
    if event is not None:
        raise RuntimeError(
            f"this Trainer was superseded by {event.describe()}, made later on the same "
            "variables: train with that one (or make a new Trainer here)"
        )


def watch(owner: Any, fn: Callable[[Supersession], Any]) -> None:
    """Call `fn(event)` when `owner` is superseded (at once if it already was). Held
    weakly when `fn` is a bound method, so a watching panel can still be dropped."""
    with _lock:
        record = _record_of(owner)
        event = record.superseded
        if event is None:
            ref = weakref.WeakMethod(fn) if inspect.ismethod(fn) else None
            record.watchers.append(_weak_call(ref) if ref is not None else fn)
            return
    fn(event)


def _weak_call(ref: weakref.WeakMethod) -> Callable[[Supersession], Any]:
    def call(event: Supersession) -> None:
        fn = ref()
        if fn is not None:
            fn(event)

    return call
