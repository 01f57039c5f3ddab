"""The trainer on tf.distribute: two logical CPUs, two worker processes, bad clusters.

Logical devices and clusters must be set up before TensorFlow starts, so every case
runs tests/distribute_worker.py in fresh processes (on free ports of 127.0.0.1 for the
clusters), bounded in time and always killed at the end.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HELPER = Path(__file__).with_name("distribute_worker.py")
SGD_LOSSES = [19.457, 8.134604, 4.186867, 2.8102624, 2.330071, 2.1624107]
SGD_A = [0.116900004, 0.18587564, 0.22655392, 0.25052384, 0.2646282, 0.2729075]
SGD_B = [0.023920001, 0.038291242, 0.0470237, 0.052426066, 0.055861536, 0.05813503]
ADAM_LOSSES = [19.457, 10.991247, 5.402445, 2.563472, 2.0541918]
LIMIT_S = 120  # the most any group of processes here may take


def launch(args: list[str], logs: Path, name: str, tf_config: dict | None = None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TMPDIR=str(logs))
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    with open(logs / f"{name}.log", "w") as out:  # not a pipe: a full one could stall a peer
        command = [sys.executable, str(HELPER), *args]
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def results(procs: list, logs: Path, names: list[str], limit: float = LIMIT_S) -> list[dict]:
    """Wait for every process (all within `limit` s), then read each one's RESULT line;
    every process is killed at the end, whatever happened."""
    try:
        for proc in procs:
            proc.wait(timeout=limit)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    found = []
    for name in names:
        text = (logs / f"{name}.log").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith("RESULT ")]
        assert lines, f"{name} printed no result:\n{text[-3000:]}"
        found.append(json.loads(lines[-1][len("RESULT ") :]))
    return found


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def cluster(ports: list[int], index: int) -> dict:
    workers = [f"127.0.0.1:{p}" for p in ports]
    return {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}


def run_workers(args: list[str], logs: Path, tag: str) -> list[dict]:
    ports = free_ports(2)
    names = [f"{tag}{i}" for i in range(2)]
    procs = [launch(args, logs, n, cluster(ports, i)) for i, n in enumerate(names)]
    return results(procs, logs, names)


# -- MirroredStrategy on two logical CPUs (one subprocess for all cases) -------------------------


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory) -> dict:
    logs = tmp_path_factory.mktemp("mirrored")
    return results([launch(["mirrored"], logs, "mirrored")], logs, ["mirrored"])[0]


def test_mirrored_seed_regression_equals_one_device(mirrored):
    seed = mirrored["seed"]
    assert mirrored["replicas"] == 2
    np.testing.assert_allclose(seed["loss"], SGD_LOSSES, rtol=1e-5)
    np.testing.assert_allclose(seed["a"], SGD_A, rtol=1e-5)
    np.testing.assert_allclose(seed["b"], SGD_B, rtol=1e-5)
    assert seed["distribution"] == "MirroredStrategy · 2 replicas · global batch 9"
    assert "MirroredStrategy" in seed["repr"]


def test_mirrored_batches_even_with_an_empty_replica_part(mirrored):
    # batches of 4 of 9 samples: the last one (1 sample) leaves one replica nothing
    np.testing.assert_allclose(mirrored["seed_batches"]["two"], mirrored["seed_batches"]["one"],
                               rtol=1e-5)  # fmt: skip


def test_mirrored_dense_adam_table(mirrored):
    np.testing.assert_allclose(mirrored["dense_adam"], ADAM_LOSSES, rtol=1e-4)


def test_mirrored_mlp_mean_loss_matches_one_device_and_trains(mirrored):
    mlp = mirrored["mlp"]
    assert mlp["reduction"] == "mean"
    assert mlp["distribution"] == "MirroredStrategy · 2 replicas · global batch 64"
    for key, values in mlp["one"].items():
        np.testing.assert_allclose(mlp["two"][key], values, rtol=1e-5, err_msg=key)
    loss = mlp["two"]["loss"]
    assert loss[-1] < 0.5 * loss[0]


def test_mirrored_dataset_input(mirrored):
    ds = mirrored["dataset"]
    np.testing.assert_allclose(ds["two"], ds["one"], rtol=1e-5)


def test_mirrored_validation_dataset_and_metrics(mirrored):
    one, two = mirrored["dataset_val"]["one"], mirrored["dataset_val"]["two"]
    for key, values in one.items():
        np.testing.assert_allclose(two[key], values, rtol=1e-5, err_msg=key)


def test_mirrored_nan_fault_pauses_and_restores(mirrored):
    one, two = mirrored["fault"]["one"], mirrored["fault"]["two"]
    assert two["message"].startswith("Training paused at epoch")
    assert "Weights restored to the last finite step" in two["message"]
    assert two == one and two["finite"]


def test_mirrored_controls_pause_step_rate_stop(mirrored):
    c = mirrored["controls"]
    assert c["held"] and c["ended"]
    assert c["still"] == c["at_pause"]
    assert c["after_step"] == c["at_pause"] + 1
    np.testing.assert_allclose(c["rates"], [1e-4, 2e-4], rtol=1e-6)
    assert c["epochs"] > c["after_step"]


def test_mirrored_checkpoint_resume(mirrored):
    assert mirrored["resume"]["at"] == 3
    np.testing.assert_allclose(mirrored["resume"]["loss"], SGD_LOSSES, rtol=1e-5)


def test_panel_shows_strategy_instead_of_device(mirrored):
    panel = mirrored["panel"]
    assert panel["strategy"] == "MirroredStrategy · 2 replicas · global batch 32"
    assert panel["device_display"] == "none"
    assert panel["epochs"] == 2


def test_bad_configuration_is_a_clear_error(mirrored):
    errors = mirrored["errors"]
    for key in ("params_outside", "model_outside"):
        assert "outside this MirroredStrategy's scope" in errors[key], errors[key]
        assert "strategy made after the model" in errors[key]
    assert errors["params_outside"].startswith("ValueError: a_out was created outside")
    assert "sequential" in errors["model_outside"]
    assert "optimizer Adam was made outside" in errors["optimizer_outside"]
    assert "neither a sum nor a mean" in errors["neither_sum_nor_mean"]
    assert "loss_reduction=" in errors["neither_sum_nor_mean"]
    assert "step= cannot run under a strategy" in errors["step_style"]
    assert "drop device=" in errors["device_too"]
    assert "known length" in errors["unknown_length"]
    assert mirrored["forced_reduction"] == "mean"


# -- MultiWorkerMirroredStrategy: two processes ----------------------------------------------


def single_process_reference() -> list[float]:
    import tensorflow as tf

    from tapemagic.training.trainer import Trainer

    x = [1.0, 4.0, 6, 3, 3, 4, 5, 6, 7]
    y = [0.25, 1.2, 0.79, 0.52, 1.6, 1.7, 1.9, 2, 2]
    a, b = tf.Variable(0.0), tf.Variable(0.0)
    t = Trainer(params=[a, b], predict=lambda v: a * v + b, data=(x, y), optimizer="sgd",
                loss=lambda t, p: tf.reduce_sum(tf.square(t - p)), learning_rate=0.001)  # fmt: skip
    t.run(6)
    t.learning_rate = 0.002
    return t.run(1)["loss"]


def single_process_mlp() -> list[float]:
    from distribute_worker import mlp_case

    from tapemagic.training.trainer import Trainer

    model, data, kwargs = mlp_case()
    return Trainer(model=model, data=data, **kwargs).run(3)["loss"]


def test_multi_worker_matches_one_process_and_resumes_from_chief(tmp_path):
    directory = str(tmp_path / "ckpt")
    logs = tmp_path / "logs"
    logs.mkdir()
    chief, other = run_workers(["worker", "stop", directory], logs, "stop")
    assert chief["chief"] and not other["chief"]
    assert chief["distribution"] == "MultiWorkerMirroredStrategy · 2 workers · 2 replicas · " \
        "global batch 9 · chief"  # fmt: skip
    assert other["distribution"].endswith("worker 1")
    assert chief["view"] == "widget" and other["view"] == "text"  # workers run headless
    mlp = single_process_mlp()
    for side in (chief, other):  # the chief stopped the run after epoch 2; the worker too
        assert side["start"] == 0 and side["epoch"] == 3 and side["panel_error"] is None
        np.testing.assert_allclose(side["loss"], SGD_LOSSES[:3], rtol=1e-4)
        np.testing.assert_allclose(side["mlp"], mlp, rtol=1e-4)

    chief, other = run_workers(["worker", "resume", directory], logs, "resume")
    reference = single_process_reference()
    for side in (chief, other):  # both resumed from the chief's checkpoint
        assert side["start"] == 3
        np.testing.assert_allclose(side["loss"][:7], reference, rtol=1e-4)
        np.testing.assert_allclose(side["learning_rate"][6], 0.002, rtol=1e-6)
    c = chief["controls"]  # the chief paused, stepped, resumed, stopped: the worker followed
    assert c["held"] and c["ended"] and c["still"] == c["at_pause"]
    assert c["after_step"] == c["at_pause"] + 1 and c["epoch"] > c["after_step"]
    assert other["epoch"] == chief["epoch"] == c["epoch"]
    assert chief["loss"] == other["loss"] and chief["params"] == other["params"]
    assert not list(logs.glob("tapemagic-worker-ckpt-*"))  # the worker's scratch is gone


def test_cluster_with_nobody_there_fails_in_bounded_time(tmp_path):
    ports = free_ports(4)
    procs, names = [], []
    for index in (0, 1):  # two clusters of one: a chief without worker 1, a worker 1 alone
        names.append(f"lonely{index}")
        pair = ports[2 * index : 2 * index + 2]
        procs.append(launch(["lonely", "3"], tmp_path, names[-1], cluster(pair, index)))
    alone_chief, alone_worker = results(procs, tmp_path, names, limit=60)
    assert alone_chief["error"].startswith(
        f"ClusterError: TF_CONFIG names worker 1 at 127.0.0.1:{ports[1]}, but nothing answered "
        "there within 3 s"
    )
    assert alone_worker["error"].startswith("ClusterError: could not join the cluster within 3 s")
    assert f"the chief at 127.0.0.1:{ports[2]} did not answer" in alone_worker["error"]
    assert alone_chief["seconds"] < 20 and alone_worker["seconds"] < 40
