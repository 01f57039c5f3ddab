"""Checkpoints that never lose a good state: damaged directories, one writer, the rate.

Each fault is made by hand on a directory a first trainer wrote (the seed's regression,
SGD, a checkpoint after each of 3 epochs: ckpt-1, ckpt-2, ckpt-3). Every test checks the
message the user sees and that nothing was lost: the files are as they were, the
variables untouched, or the resumed weights and history those of the checkpoint.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import run
from IPython.utils.capture import capture_output

from tapemagic.training.checkpoints import CheckpointError
from tapemagic.training.controls import Controls
from tapemagic.training.trainer import Trainer

X = [1.0, 4.0, 6, 3, 3, 4, 5, 6, 7]
Y = [0.25, 1.2, 0.79, 0.52, 1.6, 1.7, 1.9, 2, 2]
SGD_LOSSES = [19.457, 8.134604, 4.186867, 2.8102624, 2.330071, 2.1624107]
SGD_AB = [
    (0.116900004, 0.023920001),
    (0.18587564, 0.038291242),
    (0.22655392, 0.0470237),
    (0.25052384, 0.052426066),
]
WAIT = 10.0  # seconds: the bound on every wait for another thread or process
DATA = "data-00000-of-00001"


def sum_sq(y_true, y_pred):
    return tf.reduce_sum(tf.square(y_true - y_pred))


def make(directory, start: float = 0.5, **kwargs) -> tuple[Trainer, tf.Variable, tf.Variable]:
    """The seed's regression on fresh variables that start at `start` (so that a resume
    shows, and so does a restore that did not happen)."""
    a, b = tf.Variable(start), tf.Variable(start)
    kwargs = {"optimizer": "sgd", "learning_rate": 0.001, "checkpoint_every": 1, **kwargs}
    trainer = Trainer(
        params={"a": a, "b": b}, predict=lambda x: a * x + b, loss=sum_sq, data=(X, Y),
        checkpoint_dir=directory, **kwargs,
    )  # fmt: skip
    return trainer, a, b


@pytest.fixture
def saved(tmp_path) -> Path:
    """ckpt-1..3 after epochs 1..3 of the seed's regression; the writer let go."""
    directory = tmp_path / "ckpt"
    first, _, _ = make(str(directory), start=0.0)
    first.run(3)
    first.close()
    assert sorted(p.name for p in directory.glob("ckpt-*.index")) == [
        "ckpt-1.index", "ckpt-2.index", "ckpt-3.index",
    ]  # fmt: skip
    return directory


def files(directory: Path) -> dict[str, bytes]:
    """Every checkpoint file's bytes (not the lock file, whose content names the holder)."""
    found = sorted(p for p in directory.rglob("*") if p.is_file() and p.name[0] != ".")
    return {str(p.relative_to(directory)): p.read_bytes() for p in found}


def refused(directory: Path, **kwargs) -> str:
    """The one-line error of a trainer made on `directory`, after checking that neither
    the files nor the new trainer's variables changed."""
    before = files(directory)
    a, b = tf.Variable(0.5), tf.Variable(0.5)
    with pytest.raises(CheckpointError) as info:
        Trainer(
            params={"a": a, "b": b}, predict=lambda x: a * x + b, loss=sum_sq, data=(X, Y),
            optimizer="sgd", learning_rate=0.001, checkpoint_dir=str(directory), **kwargs,
        )  # fmt: skip
    assert files(directory) == before  # nothing deleted, nothing written
    assert (a.numpy(), b.numpy()) == (0.5, 0.5)  # nothing half-restored
    message = str(info.value)
    assert "\n" not in message
    return message


def assert_resumed(trainer: Trainer, epoch: int) -> None:
    """At `epoch` with the weights and history the checkpoint of that epoch holds."""
    assert trainer.epoch == epoch
    np.testing.assert_allclose(trainer.history["loss"], SGD_LOSSES[:epoch], rtol=1e-5)
    np.testing.assert_allclose(list(trainer.param_values().values()), SGD_AB[epoch - 1])


VALID_3 = "ckpt-3 (epoch 3), ckpt-2 (epoch 2), ckpt-1 (epoch 1)"


# -- damaged or partial directories ----------------------------------------------------


def test_state_file_missing_is_an_error_then_latest_valid_resumes_and_loses_nothing(saved):
    (saved / "checkpoint").unlink()
    assert refused(saved) == (
        f"checkpoint_dir {saved} is damaged: its 'checkpoint' state file is missing; valid "
        f"checkpoints there, newest first: {VALID_3}; pass resume='latest_valid' to resume "
        "from ckpt-3 (epoch 3) (nothing is deleted), or another checkpoint_dir to start afresh"
    )
    old = files(saved)
    trainer, _, _ = make(str(saved), resume="latest_valid")
    assert_resumed(trainer, 3)
    assert trainer.messages[-1] == (
        f"resumed from {saved}/ckpt-3 at epoch 3 (the newest valid checkpoint: its "
        "'checkpoint' state file is missing)"
    )
    # More saves than max_to_keep: numbered after what is there; no old file touched.
    trainer.run(4)
    now = files(saved)
    assert all(now[name] == data for name, data in old.items())
    assert sorted(p.name for p in saved.glob("ckpt-*.index")) == [
        "ckpt-1.index",
        "ckpt-2.index",
        "ckpt-3.index",
        "ckpt-5.index",
        "ckpt-6.index",
        "ckpt-7.index",
    ]  # ckpt-4, the first new one, went by the new state file's rotation
    trainer.close()
    again, _, _ = make(str(saved))  # the directory is whole again: a plain resume
    assert again.epoch == 7 and again.history["loss"] == trainer.history["loss"]


def test_train_magic_says_its_own_options_and_resumes_with_them(saved, ip):
    """%train users are told the option to type, and --resume latest_valid works."""
    (saved / "checkpoint").unlink()
    ip.user_ns.update(sum_sq=sum_sq, X=np.array(X, "float32"), Y=np.array(Y, "float32"))
    run(ip, "a, b = tf.Variable(0.5), tf.Variable(0.5)\npredict = lambda x: a * x + b")
    line = (
        f"%train --params a,b --predict predict --loss sum_sq --data X,Y --checkpoint-dir {saved}"
    )
    with capture_output() as cap:
        assert not ip.run_cell(line).success
    assert cap.stderr.strip().splitlines()[-1] == (
        f"UsageError: %train: checkpoint_dir {saved} is damaged: its 'checkpoint' state file is "
        f"missing; valid checkpoints there, newest first: {VALID_3}; pass --resume latest_valid "
        "to resume from ckpt-3 (epoch 3) (nothing is deleted), or another --checkpoint-dir to "
        "start afresh"
    )
    assert ip.user_ns["a"].numpy() == 0.5  # nothing was restored into the user's variables
    with capture_output():
        run(ip, line + " --resume latest_valid")
    panel = ip.user_ns["_panel"]
    assert panel.trainer.epoch == 3 and ip.user_ns["a"].numpy() == pytest.approx(SGD_AB[2][0])
    panel.close()
    panel.trainer.close()


def test_garbled_state_file_is_an_error_and_its_bytes_are_kept(saved):
    (saved / "checkpoint").write_text("model_checkpoint_path: {{{ garbage")
    assert refused(saved) == (
        f"checkpoint_dir {saved} is damaged: its 'checkpoint' state file is unreadable; "
        f"valid checkpoints there, newest first: {VALID_3}; pass resume='latest_valid' to "
        "resume from ckpt-3 (epoch 3) (nothing is deleted), or another checkpoint_dir to "
        "start afresh"
    )
    trainer, _, _ = make(str(saved), resume="latest_valid")
    assert_resumed(trainer, 3)
    trainer.run(1)
    assert (saved / "checkpoint.unreadable").read_text() == "model_checkpoint_path: {{{ garbage"
    assert (saved / "ckpt-4.index").exists() and (saved / "ckpt-3.index").exists()


def test_latest_index_missing_offers_the_one_before(saved):
    (saved / "ckpt-3.index").unlink()
    assert refused(saved) == (
        f"checkpoint_dir {saved} is damaged: its latest checkpoint is unusable: ckpt-3 has no "
        ".index file; valid checkpoints there, newest first: ckpt-2 (epoch 2), ckpt-1 "
        "(epoch 1); pass resume='latest_valid' to resume from ckpt-2 (epoch 2) (nothing is "
        "deleted), or another checkpoint_dir to start afresh"
    )
    trainer, _, _ = make(str(saved), resume="latest_valid")
    assert_resumed(trainer, 2)
    trainer.run(1)  # saved as ckpt-4: the orphaned ckpt-3 data is not overwritten
    assert (saved / f"ckpt-3.{DATA}").exists() and (saved / "ckpt-4.index").exists()


def test_latest_gone_entirely(saved):
    for path in saved.glob("ckpt-3.*"):
        path.unlink()
    assert refused(saved).startswith(
        f"checkpoint_dir {saved} is damaged: its 'checkpoint' file names ckpt-3, which is not "
        "there; valid checkpoints there, newest first: ckpt-2 (epoch 2), ckpt-1 (epoch 1);"
    )


def test_truncated_latest_data_names_the_file_and_restores_nothing(saved):
    data = saved / f"ckpt-3.{DATA}"
    data.write_bytes(data.read_bytes()[:10])
    message = refused(saved)
    assert message.startswith(
        f"checkpoint_dir {saved} is damaged: its latest checkpoint is unusable: {data} is "
        "truncated or corrupt ("
    )
    assert message.endswith(
        "valid checkpoints there, newest first: ckpt-2 (epoch 2), ckpt-1 (epoch 1); pass "
        "resume='latest_valid' to resume from ckpt-2 (epoch 2) (nothing is deleted), or "
        "another checkpoint_dir to start afresh"
    )
    trainer, _, _ = make(str(saved), resume="latest_valid")
    assert_resumed(trainer, 2)


def test_truncated_latest_index_names_the_file(saved):
    index = saved / "ckpt-3.index"
    index.write_bytes(index.read_bytes()[:5])
    message = refused(saved)
    assert f"its latest checkpoint is unusable: {index} is truncated or corrupt (" in message
    assert "resume from ckpt-2 (epoch 2)" in message


def test_missing_latest_data_names_the_file(saved):
    (saved / f"ckpt-3.{DATA}").unlink()
    message = refused(saved)
    assert f"its latest checkpoint is unusable: {saved}/ckpt-3.{DATA} is missing;" in message
    assert "resume from ckpt-2 (epoch 2)" in message


def test_no_valid_checkpoint_left_says_so_whatever_resume_asks(saved):
    for n in (1, 2, 3):
        (saved / f"ckpt-{n}.{DATA}").write_bytes(b"")
    expected = (
        f"checkpoint_dir {saved} is damaged: its latest checkpoint is unusable: "
        f"{saved}/ckpt-3.{DATA} is truncated or corrupt ("
    )
    for resume in (True, "latest_valid"):
        message = refused(saved, resume=resume)
        assert message.startswith(expected)
        assert message.endswith(
            "; no valid checkpoint is there (nothing was changed): move the directory away "
            "or pass another checkpoint_dir, or resume=False to start at epoch 0 and save "
            "after what is there"
        )


def test_a_save_newer_than_the_state_file(saved):
    # The state file as it was after epoch 2: a crash between a save and its listing.
    (saved / "checkpoint").write_text(
        'model_checkpoint_path: "ckpt-2"\nall_model_checkpoint_paths: "ckpt-1"\n'
        'all_model_checkpoint_paths: "ckpt-2"\n'
    )
    assert refused(saved).startswith(
        f"checkpoint_dir {saved} is damaged: ckpt-3 is newer than the latest its "
        f"'checkpoint' file names (ckpt-2); valid checkpoints there, newest first: {VALID_3};"
    )
    trainer, _, _ = make(str(saved), resume="latest_valid")
    assert_resumed(trainer, 3)


def test_a_directory_whose_numbers_restarted_is_not_damaged(saved):
    # Earlier versions numbered a resumed trainer's saves from 1 again: the state file,
    # not the numbers, says which is the latest.
    (saved / "checkpoint").write_text(
        'model_checkpoint_path: "ckpt-1"\nall_model_checkpoint_paths: "ckpt-2"\n'
        'all_model_checkpoint_paths: "ckpt-3"\nall_model_checkpoint_paths: "ckpt-1"\n'
    )
    trainer, _, _ = make(str(saved))
    assert_resumed(trainer, 1)
    trainer.run(1)
    assert (saved / "ckpt-4.index").exists()


def test_an_unfinished_save(saved):
    (saved / "ckpt-4_temp").mkdir()
    (saved / "ckpt-4_temp" / "part-00000-of-00001.index").write_bytes(b"x")
    assert refused(saved).startswith(
        f"checkpoint_dir {saved} is damaged: ckpt-4 is newer than the latest its "
        "'checkpoint' file names (ckpt-3) and damaged: ckpt-4 has an unfinished save; valid "
        f"checkpoints there, newest first: {VALID_3};"
    )


def test_resume_false_starts_at_zero_and_overwrites_nothing(saved):
    (saved / "checkpoint").unlink()
    old = files(saved)
    trainer, a, b = make(str(saved), resume=False)
    assert trainer.epoch == 0 and (a.numpy(), b.numpy()) == (0.5, 0.5)
    assert trainer.messages[-1] == (
        "started at epoch 0 (resume=False); saves go after the 3 checkpoints there"
    )
    trainer.run(1)
    assert all(files(saved)[name] == data for name, data in old.items())
    assert (saved / "ckpt-4.index").exists()


def test_a_healthy_resume_numbers_its_saves_after_the_last(saved):
    old = files(saved)
    trainer, _, _ = make(str(saved))
    assert_resumed(trainer, 3)
    assert trainer.messages[-1] == f"resumed from {saved}/ckpt-3 at epoch 3"
    trainer.run(1)
    assert (saved / "ckpt-4.index").exists()
    assert files(saved)["ckpt-3.index"] == old["ckpt-3.index"]  # ckpt-1 went by rotation


# -- the arguments and the directory itself -------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"checkpoint_dir": ""}, "checkpoint_dir is empty: pass a directory path, or None to "
         "save nothing"),
        ({"checkpoint_dir": 3}, "checkpoint_dir must be a path (str or pathlib.Path), got int"),
        ({"checkpoint_dir": "x", "resume": "yes"}, "resume must be True (the newest "
         "checkpoint), 'latest_valid' (the newest valid one, skipping damaged ones) or False "
         "(start at epoch 0), got 'yes'"),
        ({"checkpoint_dir": "x", "resume": 1}, "resume must be True (the newest checkpoint), "
         "'latest_valid' (the newest valid one, skipping damaged ones) or False (start at "
         "epoch 0), got 1"),
        ({"resume": "latest_valid"}, "resume='latest_valid' needs checkpoint_dir=... to "
         "resume from"),
        ({"checkpoint_dir": "x", "checkpoint_every": 0}, "checkpoint_every must be a "
         "positive int, got 0"),
    ],
)  # fmt: skip
def test_bad_checkpoint_arguments(kwargs, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = tf.Variable(0.0)
    with pytest.raises(ValueError) as info:
        Trainer(params=[a], predict=lambda x: a * x, loss=sum_sq, data=(X, Y), **kwargs)
    assert str(info.value) == message
    assert list(tmp_path.iterdir()) == []  # no directory made


def test_a_path_object_is_accepted(tmp_path):
    trainer, _, _ = make(tmp_path / "ckpt")
    trainer.run(1)
    assert (tmp_path / "ckpt" / "ckpt-1.index").exists()


def test_unwritable_checkpoint_dir_is_an_error_when_the_trainer_is_made(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    with pytest.raises(CheckpointError) as info:
        make(str(a_file))
    assert str(info.value) == f"checkpoint_dir {a_file} is a file: pass a directory path"
    with pytest.raises(CheckpointError) as info:
        make(str(a_file / "ckpt"))
    assert str(info.value).startswith(f"checkpoint_dir {a_file}/ckpt cannot be created (")
    assert str(info.value).endswith("): pass a directory you can write to")
    assert a_file.read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_checkpoint_dir_is_an_error_when_the_trainer_is_made(saved):
    saved.chmod(0o500)
    try:
        message = refused(saved)
    finally:
        saved.chmod(0o700)
    assert message.startswith(f"checkpoint_dir {saved} is not writable (PermissionError")


# -- one writer per directory ----------------------------------------------------------


def test_a_second_trainer_is_refused_while_the_first_trains_then_takes_over(saved):
    first, _, _ = make(str(saved))
    worker = threading.Thread(target=first.run, args=(10**6,), daemon=True)
    worker.start()
    try:
        first.pause()
        assert first.wait_paused(WAIT) and first.running
        assert refused(saved) == (
            f"checkpoint_dir {saved} is being written by another Trainer in this process, "
            "which is training now: request_stop() and wait() on it first, or pass another "
            "checkpoint_dir"
        )
    finally:
        first.request_stop()
        assert first.wait(WAIT)
        worker.join(WAIT)
    epoch = first.epoch
    second, _, _ = make(str(saved))  # the first is idle: the directory is the second's now
    assert second.epoch == epoch and second.history["loss"] == first.history["loss"]
    before = files(saved)
    with pytest.raises(CheckpointError) as info:
        first.run(1)
    assert str(info.value) == (
        f"checkpoint_dir {saved} now belongs to a newer Trainer made in this process: train "
        "with that one, or make a new Trainer (it resumes from there)"
    )
    assert first.epoch == epoch and files(saved) == before


def test_close_lets_the_directory_go(saved):
    trainer, _, _ = make(str(saved))
    trainer.close()
    with pytest.raises(CheckpointError) as info:
        trainer.run(1)
    assert str(info.value) == (
        f"this trainer let checkpoint_dir {saved} go (close()): make a new Trainer to resume "
        "from it"
    )
    assert make(str(saved))[0].epoch == 3


HOLDER = """
import sys, tensorflow as tf
from tapemagic.training.trainer import Trainer
X, Y = XY
a, b = tf.Variable(0.0), tf.Variable(0.0)
t = Trainer(params={"a": a, "b": b}, predict=lambda x: a * x + b, data=(X, Y),
            loss=lambda y, p: tf.reduce_sum(tf.square(y - p)), optimizer="sgd",
            learning_rate=0.001, checkpoint_dir=sys.argv[1])
print("READY", t.epoch, flush=True)
sys.stdin.read()
""".replace("XY", repr((X, Y)))


def test_another_process_is_refused_and_its_crash_leaves_no_stuck_lock(saved):
    trainer, _, _ = make(str(saved))  # holds the directory, then is collected
    del trainer
    gc.collect()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(saved)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "READY 3"  # it resumed: the lock was free
        before = files(saved)
        with pytest.raises(CheckpointError) as info:
            make(str(saved))
        message = str(info.value)
        assert message.startswith(
            f"checkpoint_dir {saved} is in use by a trainer in another process (pid {proc.pid} on "
        )
        assert message.endswith(
            "): stop that trainer (or its kernel) first, or pass another checkpoint_dir"
        )
        assert files(saved) == before
    finally:
        proc.kill()  # a crash: no clean-up runs in it
        proc.wait(WAIT)
    assert (saved / ".tapemagic.lock").exists()  # its file stays; its lock went with it
    trainer, _, _ = make(str(saved))
    assert_resumed(trainer, 3)
    trainer.run(1)
    assert trainer.epoch == 4


def test_a_store_collected_while_the_registry_is_locked_lets_go_afterwards(tmp_path):
    """A collection can run a store's finalizer inside another claim (same thread): it
    must neither deadlock nor leave the directory locked."""
    import fcntl

    from tapemagic.training import checkpoints

    directory = tmp_path / "ckpt"
    store = checkpoints.CheckpointStore(str(directory))
    store.claim()
    with checkpoints._holding():
        del store
        gc.collect()  # the finalizer runs here, while this thread holds the registry
    fd = os.open(directory / ".tapemagic.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: no BlockingIOError
    finally:
        os.close(fd)


# -- the learning rate a run ends with ------------------------------------------------


def test_a_rate_set_during_the_last_call_is_the_checkpoints_and_the_next_runs(tmp_path):
    for every in (None, 1):  # the end-of-run save, and the save at the last epoch
        directory = str(tmp_path / f"every-{every}")
        trainer, _, _ = make(directory, checkpoint_every=every)
        # A listener runs in the training thread after each call: at the last epoch, a
        # rate set there arrives while the run is on and no call will take it.
        last = lambda r, t=trainer: r.epoch == 2 and setattr(t, "learning_rate", 0.01)  # noqa: E731
        trainer.add_listener(last)
        trainer.run(3)
        np.testing.assert_allclose(trainer.history["learning_rate"], [0.001] * 3)
        assert np.isclose(trainer.learning_rate, 0.01)
        assert np.isclose(trainer.optimizer.learning_rate.numpy(), 0.01)  # in use, not pending
        saves = sorted(p.name for p in Path(directory).glob("ckpt-*.index"))
        assert saves == (
            ["ckpt-1.index"] if every is None else [f"ckpt-{n}.index" for n in (1, 2, 3)]
        )
        trainer.close()
        resumed, _, _ = make(directory, learning_rate=None)
        assert resumed.epoch == 3 and np.isclose(resumed.learning_rate, 0.01)
        resumed.run(1)
        np.testing.assert_allclose(resumed.history["learning_rate"], [0.001] * 3 + [0.01])
        resumed.close()


def test_a_checkpoint_between_calls_records_the_rate_the_next_call_uses(tmp_path):
    trainer, _, _ = make(str(tmp_path))
    first = lambda r, t=trainer: r.epoch == 0 and setattr(t, "learning_rate", 0.01)  # noqa: E731
    trainer.add_listener(first)  # pending when ckpt-1 is written, in use from epoch 2 on
    trainer.run(3)
    np.testing.assert_allclose(trainer.history["learning_rate"], [0.001, 0.01, 0.01])
    reader = tf.train.load_checkpoint(str(tmp_path / "ckpt-1"))
    meta = json.loads(reader.get_tensor("meta/.ATTRIBUTES/py_state"))
    assert meta["epoch"] == 1 and np.isclose(meta["learning_rate"], 0.01)


def test_controls_end_applies_a_rate_before_the_final_save_and_again_during_it():
    controls, applied, saved = Controls(), [], []
    controls.begin()
    controls.set_learning_rate(0.1, applied.append)  # running: pending
    assert applied == [] and controls.pending_learning_rate == 0.1

    def persist():
        saved.append(applied[-1])
        if len(saved) == 1:  # another thread sets a rate while the final save runs
            controls.set_learning_rate(0.2, applied.append)

    controls.end(applied.append, persist)
    assert saved == [0.1, 0.2] and applied == [0.1, 0.2]
    assert not controls.running and controls.pending_learning_rate is None
    controls.set_learning_rate(0.3, applied.append)  # idle: at once
    assert applied[-1] == 0.3


def test_controls_end_with_one_save_only_still_applies_the_rate():
    controls, applied, saved = Controls(), [], []
    controls.begin()

    def persist():
        saved.append(len(applied))
        controls.set_learning_rate(0.2, applied.append)

    controls.end(applied.append, persist, again=False)
    assert saved == [0] and applied == [0.2] and not controls.running
