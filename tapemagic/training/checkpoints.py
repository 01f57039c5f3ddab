"""Checkpoints: weights, optimizer state and the history, saved together, never lost.

The history travels inside the checkpoint as a JSON string, so the weights and the
epochs they belong to are written (and restored) as one unit: a kernel restart resumes
exactly where the last save left off. The string is Python state, not a `tf.Variable`:
under MultiWorkerMirroredStrategy a variable is broadcast from the chief, and strings
cannot be.

A good state is never lost:

- A directory that is damaged or partial (its `checkpoint` state file missing or
  unreadable, the latest `.index` or `.data-*` file missing or truncated, a save newer
  than the state file) is a `CheckpointError` when the trainer is made, naming what is
  wrong and the valid checkpoints there; `resume="latest_valid"` resumes from the newest
  valid one (the highest number). Nothing is deleted or overwritten: saves are numbered
  after every file there, the rotation (`max_to_keep`) only removes checkpoints the state
  file lists, and an unreadable state file is kept as `checkpoint.unreadable`.
- A checkpoint is read whole before any variable is assigned, so a truncated file leaves
  the weights as they were.
- One writer per directory: the writing process holds an `flock` on `.tapemagic.lock`
  there (the OS drops it when the process dies, so a crash leaves nothing stuck); within
  a process a new trainer takes the directory over from an idle one, which may then no
  longer train, and is refused while the current one is training.

With several workers, all of them save (reading a metric's variables all-reduces them
across workers), but only the chief writes to `directory` (and locks it); the others
write to a directory of their own that is deleted after each save. Everyone resumes
from `directory`.

Owns the Trainer's `checkpoint_dir`, `checkpoint_every` and `resume`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from tapemagic.variables import unwrap

try:  # POSIX; elsewhere only the in-process rule applies
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

FORMAT = 1
META_KEYS = ("meta/.ATTRIBUTES/py_state", "meta/.ATTRIBUTES/VARIABLE_VALUE")  # new, older
PREFIX = "ckpt"
STATE_FILE = "checkpoint"  # tf.train.CheckpointManager's list of checkpoints
LOCK_FILE = ".tapemagic.lock"
LATEST_VALID = "latest_valid"
_FILE = re.compile(rf"^{PREFIX}-(\d+)(?:\.index|\.data-(\d+)-of-(\d+)|(_temp.*))$")


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be used as it is; the message says what to do."""


# -- the arguments -------------------------------------------------------------------


def check_every(every: Any) -> int | None:
    """`checkpoint_every`: None or a positive int, else a one-line ValueError."""
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise ValueError(f"checkpoint_every must be a positive int, got {every!r}")
    return every


def check_arguments(directory: Any, every: Any, resume: Any) -> str | None:
    """`checkpoint_dir`, `checkpoint_every`, `resume` checked together; the directory as a
    string (None: no checkpoints). Nothing is touched on disk yet."""
    check_every(every)
    if resume not in (True, False, LATEST_VALID) or not isinstance(resume, bool | str):
        raise ValueError(
            f"resume must be True (the newest checkpoint), {LATEST_VALID!r} (the newest "
            f"valid one, skipping damaged ones) or False (start at epoch 0), got {resume!r}"
        )
    if directory is None:
        # checkpoint_every alone is allowed: it still ends each compiled call at its epochs
        if resume == LATEST_VALID:
            raise ValueError(f"resume={LATEST_VALID!r} needs checkpoint_dir=... to resume from")
        return None
    if not isinstance(directory, str | os.PathLike):
        raise ValueError(
            f"checkpoint_dir must be a path (str or pathlib.Path), got {type(directory).__name__}"
        )
    directory = os.fspath(directory)
    if not isinstance(directory, str) or not directory.strip():
        raise ValueError("checkpoint_dir is empty: pass a directory path, or None to save nothing")
    return directory


# -- what a directory holds ----------------------------------------------------------


@dataclass(frozen=True)
class Found:
    """One checkpoint in a directory: `problem` is None when it reads back whole."""

    number: int
    path: str  # the prefix: <directory>/ckpt-N
    problem: str | None = None
    epoch: int | None = None
    batch: int = 0

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def describe(self) -> str:
        steps = f" + {self.batch} steps" if self.batch else ""
        return f"{self.name} (epoch {self.epoch}{steps})"


@dataclass(frozen=True)
class Survey:
    """What a checkpoint directory holds, and whether it can be resumed as it is."""

    directory: str
    state: str  # 'ok', 'missing' or 'unreadable': the `checkpoint` state file
    named: int | None  # the number of the latest checkpoint the state file names
    numbers: tuple[int, ...]  # every checkpoint number with a file there, ascending
    damage: str | None  # what is wrong; None: empty, or the named latest has all its files
    latest: Found | None  # the named latest when there is no damage
    valid: tuple[Found, ...]  # when damaged: the checkpoints that read back whole, newest first

    @property
    def next_number(self) -> int:
        """The number of the next save: after every file there, so none is overwritten."""
        return max(self.numbers, default=0) + 1


@dataclass(frozen=True)
class Resumed:
    """What `CheckpointStore.resume` restored (or chose not to)."""

    meta: dict | None  # the restored checkpoint's meta; None: starting at epoch 0
    path: str | None
    note: str  # for the trainer's messages ('' when there is nothing to say)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def _read(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    """Every tensor of a checkpoint and its meta, or `_Bad` naming the file at fault."""
    try:
        reader = tf.train.load_checkpoint(path)
    except Exception as err:
        raise _Bad(f"{path}.index is truncated or corrupt ({_first_line(err)})") from err
    values = {}
    for key in sorted(reader.get_variable_to_shape_map()):
        try:
            values[key] = reader.get_tensor(key)
        except Exception as err:
            shards = tf.io.gfile.glob(f"{path}.data-*")
            where = shards[0] if len(shards) == 1 else f"a data file of {path}"
            raise _Bad(f"{where} is truncated or corrupt ({_first_line(err)})") from err
    key = next((k for k in META_KEYS if k in values), None)
    if key is None:
        raise _Bad(f"{path} holds no tapemagic meta (it was not written by a Trainer)")
    raw = values[key]
    raw = raw.item() if isinstance(raw, np.ndarray) else raw
    try:
        meta = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except ValueError as err:
        raise _Bad(f"{path} holds an unreadable meta ({_first_line(err)})") from err
    return meta, values


class _Bad(Exception):
    """A checkpoint that does not read back whole; the text says which file and why."""


def _found(directory: str, number: int, files: dict, deep: bool = True) -> Found:
    """A checkpoint from its files; `deep`: read back whole to know that it is valid."""
    path = os.path.join(directory, f"{PREFIX}-{number}")
    parts = files.get(number, {})
    if "index" not in parts:
        why = "an unfinished save" if parts.get("temp") else "no .index file"
        return Found(number, path, f"{os.path.basename(path)} has {why}")
    shards = parts.get("shards", set())
    total = parts.get("total") or 1
    missing = [i for i in range(total) if i not in shards]
    if missing or not shards:
        first = missing[0] if missing else 0
        return Found(number, path, f"{path}.data-{first:05d}-of-{total:05d} is missing")
    if not deep:
        return Found(number, path)
    try:
        meta, _ = _read(path)
    except _Bad as bad:
        return Found(number, path, str(bad))
    return Found(number, path, None, int(meta.get("epoch", 0)), int(meta.get("batch", 0)))


def survey(directory: str, known: Mapping[int, str] | None = None) -> Survey:
    """Look at every file of a checkpoint directory (which need not exist). The named
    latest is only checked file by file (the restore reads it whole); `known`: problems
    found in such a read, by checkpoint number."""
    known = known or {}
    names = tf.io.gfile.listdir(directory) if tf.io.gfile.isdir(directory) else []
    files: dict[int, dict] = {}
    for name in names:
        m = _FILE.match(name.rstrip("/"))
        if not m:
            continue
        entry = files.setdefault(int(m.group(1)), {})
        if m.group(4):
            entry["temp"] = True
        elif m.group(2) is not None:
            entry.setdefault("shards", set()).add(int(m.group(2)))
            entry["total"] = int(m.group(3))
        else:
            entry["index"] = True
    state, named, listed = "missing", None, set()
    if STATE_FILE in names:
        state = "unreadable"
        try:
            ckpt = tf.train.get_checkpoint_state(directory)
        except (ValueError, tf.errors.OpError):
            ckpt = None
        m = re.fullmatch(rf"{PREFIX}-(\d+)", os.path.basename(ckpt.model_checkpoint_path or ""))\
            if ckpt else None  # fmt: skip
        if m:
            state, named = "ok", int(m.group(1))
            for path in ckpt.all_model_checkpoint_paths:
                m = re.fullmatch(rf"{PREFIX}-(\d+)", os.path.basename(path))
                listed.update([int(m.group(1))] if m else [])
    numbers = tuple(sorted(files))
    if not numbers and state != "unreadable":
        return Survey(directory, state, named, numbers, None, None, ())
    cache: dict[int, Found] = {}

    def check(n: int, deep: bool = True) -> Found:
        if n in known:
            return Found(n, os.path.join(directory, f"{PREFIX}-{n}"), known[n])
        if n not in cache or (deep and cache[n].problem is None and cache[n].epoch is None):
            cache[n] = _found(directory, n, files, deep)
        return cache[n]

    wrong = []
    if state == "missing":
        wrong.append(f"its '{STATE_FILE}' state file is missing")
    elif state == "unreadable":
        wrong.append(f"its '{STATE_FILE}' state file is unreadable")
    else:
        latest = check(named, deep=False)
        if named not in files:
            wrong.append(f"its '{STATE_FILE}' file names {PREFIX}-{named}, which is not there")
        elif latest.problem:
            wrong.append(f"its latest checkpoint is unusable: {latest.problem}")
        # Listed ones are older whatever their number (earlier versions numbered a
        # resumed trainer's saves from 1 again); an unlisted higher one was never listed.
        newer = [n for n in numbers if n > named and n not in listed]
        if newer:
            wrong.append(
                f"{PREFIX}-{newer[-1]} is newer than the latest its '{STATE_FILE}' file names "
                f"({PREFIX}-{named})"
                + (f" and damaged: {check(newer[-1]).problem}" if check(newer[-1]).problem else "")
            )
        if not wrong:
            return Survey(directory, state, named, numbers, None, latest, ())
    valid = tuple(f for f in (check(n) for n in reversed(numbers)) if f.problem is None)
    return Survey(directory, state, named, numbers, "; ".join(wrong), None, valid)


def damage_message(found: Survey) -> str:
    """One line: the directory, what is wrong, the valid checkpoints and what to pass."""
    head = f"checkpoint_dir {found.directory} is damaged: {found.damage}"
    if not found.valid:
        return (
            f"{head}; no valid checkpoint is there (nothing was changed): move the "
            "directory away or pass another checkpoint_dir, or resume=False to start at "
            "epoch 0 and save after what is there"
        )
    listed = ", ".join(f.describe() for f in found.valid[:5])
    more = f" and {len(found.valid) - 5} more" if len(found.valid) > 5 else ""
    return (
        f"{head}; valid checkpoints there, newest first: {listed}{more}; pass "
        f"resume={LATEST_VALID!r} to resume from {found.valid[0].describe()} (nothing is "
        "deleted), or another checkpoint_dir to start afresh"
    )


# -- one writer per directory --------------------------------------------------------


@dataclass
class _Hold:
    """This process's right to write a directory: the locked file and the store using it."""

    fd: int | None  # the open, flocked lock file (None: no OS lock on this storage)
    owner: weakref.ref


_HOLDS: dict[str, _Hold] = {}
_HOLDS_LOCK = threading.Lock()
_COLLECTED: deque[str] = deque()  # directories of stores collected, to look at under the lock


def _key(directory: str) -> str:
    return directory if "://" in directory else os.path.realpath(directory)


def _collected(key: str) -> None:
    """A store was collected. The collector may run inside `_holding()` (in this thread or
    another), so this only queues its directory and sweeps if the lock is free."""
    _COLLECTED.append(key)
    _sweep()


def _sweep() -> None:
    """Let go of the directories whose store was collected (closing the file drops the
    flock); whoever holds the lock sweeps when it lets go."""
    while _COLLECTED and _HOLDS_LOCK.acquire(blocking=False):
        try:
            while _COLLECTED:
                key = _COLLECTED.popleft()
                hold = _HOLDS.get(key)
                if hold is not None and hold.owner() is None:
                    del _HOLDS[key]
                    if hold.fd is not None:
                        os.close(hold.fd)
        finally:
            _HOLDS_LOCK.release()


@contextmanager
def _holding() -> Iterator[None]:
    try:
        with _HOLDS_LOCK:
            yield
    finally:
        _sweep()


def _holder_text(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f" (pid {info['pid']} on {info['host']}, since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _lock(directory: str) -> int | None:
    """Make the directory if needed and lock it for this process; CheckpointError if it
    cannot be written or another process holds it."""
    if tf.io.gfile.exists(directory) and not tf.io.gfile.isdir(directory):
        raise CheckpointError(f"checkpoint_dir {directory} is a file: pass a directory path")
    try:
        tf.io.gfile.makedirs(directory)
    except Exception as err:
        raise CheckpointError(
            f"checkpoint_dir {directory} cannot be created ({_first_line(err)}): pass a "
            "directory you can write to"
        ) from err
    if "://" in directory or fcntl is None:  # remote storage: no OS lock to take
        return None
    path = os.path.join(directory, LOCK_FILE)
    try:
        # Saves create files: a lock file that is writable proves nothing on its own.
        probe, probe_path = tempfile.mkstemp(prefix=".tapemagic-probe-", dir=directory)
        os.close(probe)
        os.remove(probe_path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise CheckpointError(
            f"checkpoint_dir {directory} is not writable ({_first_line(err)}): pass a "
            "directory you can write to"
        ) from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        who = _holder_text(fd)
        os.close(fd)
        raise CheckpointError(
            f"checkpoint_dir {directory} is in use by a trainer in another process{who}: "
            "stop that trainer (or its kernel) first, or pass another checkpoint_dir"
        ) from None
    except OSError:  # a filesystem without flock: keep the file open, lock nothing
        pass
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since})
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
    except OSError as err:
        os.close(fd)
        raise CheckpointError(
            f"checkpoint_dir {directory} is not writable ({_first_line(err)}): pass a "
            "directory you can write to"
        ) from err
    return fd


# -- the store -----------------------------------------------------------------------


class _Meta(tf.train.experimental.PythonState):
    """A JSON string saved inside the checkpoint."""

    def __init__(self) -> None:
        self.text = ""

    def serialize(self) -> str:
        return self.text

    def deserialize(self, string_value: Any) -> None:
        value = string_value.numpy() if hasattr(string_value, "numpy") else string_value
        self.text = value.decode() if isinstance(value, bytes) else str(value)


class CheckpointStore:
    """A `tf.train.CheckpointManager` over named variables plus a JSON `meta` string.

    `writer=False` (a worker that is not the chief): saves go to a temporary directory
    that is deleted at once; reads still come from `directory`. `busy()` says whether the
    trainer using this store is training (then no other trainer may take the directory).
    """

    def __init__(
        self,
        directory: str,
        max_to_keep: int = 3,
        writer: bool = True,
        busy: Callable[[], bool] = lambda: False,
    ):
        self.directory = str(directory)
        self.max_to_keep = max_to_keep
        self.writer = writer
        self._busy = busy
        self._meta = _Meta()
        self._variables: dict[str, Any] = {}
        self._manager: tf.train.CheckpointManager | None = None
        self._ckpt: tf.train.Checkpoint | None = None
        self._next = 1
        self._state_unreadable = False
        self._status = "new"  # 'owner', then 'superseded' or 'released'

    # -- ownership ---------------------------------------------------------------

    def claim(self) -> None:
        """Become the directory's one writer (making it if needed); CheckpointError when
        it is unwritable, used by another process, or by a trainer here that is training.
        An idle trainer here that wrote it before may not train any more."""
        if not self.writer or self._status == "owner":
            return
        key = _key(self.directory)
        with _holding():
            hold = _HOLDS.get(key)
            current = hold.owner() if hold else None
            if current is not None and current._busy():
                raise CheckpointError(
                    f"checkpoint_dir {self.directory} is being written by another Trainer in "
                    "this process, which is training now: request_stop() and wait() on it "
                    "first, or pass another checkpoint_dir"
                )
            if hold is None:
                _HOLDS[key] = _Hold(_lock(self.directory), weakref.ref(self))
            else:
                hold.owner = weakref.ref(self)
                if current is not None:
                    current._status = "superseded"
            self._status = "owner"
        weakref.finalize(self, _collected, key)

    def check_owner(self) -> None:
        """CheckpointError unless this store may still write its directory."""
        if not self.writer or self._status == "owner":
            return
        if self._status == "superseded":
            raise CheckpointError(
                f"checkpoint_dir {self.directory} now belongs to a newer Trainer made in this "
                "process: train with that one, or make a new Trainer (it resumes from there)"
            )
        raise CheckpointError(
            f"this trainer let checkpoint_dir {self.directory} go (close()): make a new "
            "Trainer to resume from it"
        )

    def release(self) -> None:
        """Let the directory go (to another process too); this store writes no more."""
        if self._status != "owner":
            return
        key = _key(self.directory)
        with _holding():
            hold = _HOLDS.get(key)
            if hold is not None and hold.owner() is self:
                del _HOLDS[key]
                if hold.fd is not None:
                    os.close(hold.fd)
        self._status = "released"

    # -- reading and writing -----------------------------------------------------

    def bind(self, variables: Mapping[str, Any]) -> None:
        """Use these variables from now on (again after the optimizer changes)."""
        self._variables = {k: unwrap(v) for k, v in variables.items()}
        self._ckpt = tf.train.Checkpoint(meta=self._meta, **self._variables)
        self._manager = None  # made at the first save, over the directory as it is then

    def save(self, meta: dict) -> str:
        """Write the variables and `meta` (which must be JSON-serialisable)."""
        self._meta.text = json.dumps({"format": FORMAT, **meta})
        if not self.writer:
            scratch = tempfile.mkdtemp(prefix="tapemagic-worker-ckpt-")
            try:
                return self._ckpt.write(f"{scratch}/ckpt")
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        self.check_owner()
        if self._manager is None:
            state = os.path.join(self.directory, STATE_FILE)
            if self._state_unreadable and tf.io.gfile.exists(state):
                # The manager cannot start over an unreadable list; keep its bytes aside.
                tf.io.gfile.rename(state, f"{state}.unreadable", overwrite=True)
                self._state_unreadable = False
            self._manager = tf.train.CheckpointManager(
                self._ckpt, self.directory, self.max_to_keep, checkpoint_name=PREFIX
            )
        # Numbered after every file there: a lost state file never makes a save overwrite
        # an older checkpoint of the same number.
        path = self._manager.save(checkpoint_number=self._next)
        self._next += 1
        return path

    def resume(self, optimizer_name: str | None, mode: bool | str = True) -> Resumed:
        """Restore the newest checkpoint (`mode=True`), the newest valid one
        (`'latest_valid'`) or none (`False`); optimizer slots only for the same optimizer.
        A damaged directory under `mode=True` is a CheckpointError; nothing is assigned
        unless the whole checkpoint reads back and fits."""
        return self._resume_from(optimizer_name, mode, {})

    def _resume_from(
        self, optimizer_name: str | None, mode: bool | str, known: Mapping[int, str]
    ) -> Resumed:
        found = survey(self.directory, known)
        self._next = found.next_number
        self._state_unreadable = found.state == "unreadable"
        if mode is False:
            kept = f"; saves go after the {len(found.numbers)} checkpoints there" * bool(
                found.numbers
            )
            return Resumed(None, None, f"started at epoch 0 (resume=False){kept}")
        if found.damage is None:
            chosen, note = found.latest, ""
        elif mode == LATEST_VALID and found.valid:
            chosen = found.valid[0]
            note = f" (the newest valid checkpoint: {found.damage})"
        else:
            raise CheckpointError(damage_message(found))
        if chosen is None:
            return Resumed(None, None, "")
        try:
            meta, values = _read(chosen.path)
        except _Bad as bad:
            if found.damage is not None:  # read whole in the survey: changed since
                raise CheckpointError(f"checkpoint_dir {self.directory}: {bad}") from None
            return self._resume_from(optimizer_name, mode, {chosen.number: str(bad)})
        skip = () if meta.get("optimizer") == optimizer_name else ("o",)
        self._assign(chosen.path, values, skip)
        return Resumed(meta, chosen.path, note)

    def _assign(self, path: str, values: dict[str, np.ndarray], skip: tuple[str, ...]) -> None:
        """Check every variable against the checkpoint, then assign them all. Names
        starting with a prefix in `skip` are left alone (optimizer slots when the
        optimizer changed since the save)."""
        problems, todo = [], []
        for name, var in self._variables.items():
            if name.startswith(skip):
                continue
            value = values.get(f"{name}/.ATTRIBUTES/VARIABLE_VALUE")
            if value is None:
                problems.append(f"{name} missing")
            elif tuple(value.shape) != tuple(var.shape):
                problems.append(f"{name} has shape {tuple(value.shape)}, here {tuple(var.shape)}")
            else:
                todo.append((var, value))
        if problems:
            raise CheckpointError(
                f"checkpoint {path} does not fit this trainer ({'; '.join(problems[:3])}); "
                "use another checkpoint_dir for a different model"
            )
        for var, value in todo:
            var.assign(value)
