"""Starting a multi-worker cluster that fails within a bounded time instead of hanging.

`tf.distribute.MultiWorkerMirroredStrategy()` waits forever when `TF_CONFIG` names a
task that never starts (checked on TF 2.21: the chief blocks in the constructor).
`multi_worker_strategy(timeout=...)` makes the same strategy, but first checks
`TF_CONFIG`, gives the cluster's registration a deadline, and on the chief waits for
every other task's address to accept connections, so a wrong address or a worker that
was never started is a one-line error naming it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import tensorflow as tf

__all__ = ["ClusterError", "Role", "cluster_role", "multi_worker_strategy"]

POLL_S = 0.25  # how often the chief retries an address that is not answering yet


class ClusterError(RuntimeError):
    """The cluster described by TF_CONFIG could not be brought up."""


@dataclass(frozen=True)
class Role:
    """Where this process stands in its cluster."""

    workers: int  # processes that train (chief and workers)
    chief: bool  # the one that shows the panel and writes checkpoints
    task: str  # e.g. "worker 1", or "local"


def cluster_role(strategy: Any) -> Role:
    """The role of this process under `strategy` (one worker for non-cluster strategies)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    workers = len(spec.get("chief", ())) + len(spec.get("worker", ()))
    if workers <= 1:
        return Role(1, True, "local")
    kind, index = resolver.task_type, resolver.task_id
    chief = kind == "chief" or (kind == "worker" and index == 0 and "chief" not in spec)
    return Role(workers, chief, f"{kind} {index}")


def _read_tf_config() -> tuple[dict[str, list[str]], str, int]:
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise ClusterError(
            "TF_CONFIG is not set: set it on every machine, e.g. "
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}'
        )
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        kind, index = str(task["type"]), int(task["index"])
    except (ValueError, KeyError, TypeError) as err:
        raise ClusterError(
            f"TF_CONFIG is not valid ({type(err).__name__}: {err}); it needs "
            '{"cluster": {"worker": [addresses]}, "task": {"type": "worker", "index": i}}'
        ) from err
    jobs = {str(k): list(v) for k, v in cluster.items()}
    if kind not in jobs or not 0 <= index < len(jobs[kind]):
        raise ClusterError(
            f"TF_CONFIG's task ({kind} {index}) is not in its cluster "
            f"({', '.join(f'{k}: {len(v)}' for k, v in jobs.items())})"
        )
    return jobs, kind, index


def _answers(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
            return True
    except (OSError, ValueError):
        return False


def _wait_for_peers(jobs: dict[str, list[str]], me: tuple[str, int], timeout: float) -> None:
    """On the chief: until every other task's address accepts a connection, or raise."""
    peers = {
        f"{kind} {i}": address
        for kind in ("chief", "worker")
        for i, address in enumerate(jobs.get(kind, ()))
        if (kind, i) != me
    }
    deadline = time.monotonic() + timeout
    while True:
        missing = {name: a for name, a in peers.items() if not _answers(a)}
        if not missing:
            return
        if time.monotonic() >= deadline:
            names = ", ".join(f"{name} at {a}" for name, a in missing.items())
            raise ClusterError(
                f"TF_CONFIG names {names}, but nothing answered there within {timeout:g} s: "
                "start the same program there (with its own TF_CONFIG task) or fix the address"
            )
        time.sleep(POLL_S)


def _set_register_deadline(jobs: dict[str, list[str]], timeout: float) -> None:
    """A deadline for joining the cluster (TensorFlow's default is to wait forever).

    Uses TensorFlow's eager context, the one place this setting lives; skipped if a
    future TensorFlow moves it (then only the chief's own check bounds the wait).
    """
    try:
        from tensorflow.python.eager import context
    except ImportError:
        return
    try:  # TF 2.18 and later
        from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2 as pb
    except ImportError:
        try:  # TF 2.16 and 2.17
            from tensorflow.tsl.protobuf import coordination_config_pb2 as pb
        except ImportError:
            return
    leader = "/job:chief/replica:0/task:0" if "chief" in jobs else "/job:worker/replica:0/task:0"
    coordinated = [
        pb.CoordinatedJob(name=k, num_tasks=len(jobs[k])) for k in ("chief", "worker") if k in jobs
    ]
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=leader,
        coordinated_jobs=coordinated,
        cluster_register_timeout_in_ms=int(timeout * 1000),
    )


def multi_worker_strategy(
    timeout: float = 60.0,
    communication_options: tf.distribute.experimental.CommunicationOptions | None = None,
) -> tf.distribute.MultiWorkerMirroredStrategy:
    """`MultiWorkerMirroredStrategy` from TF_CONFIG, or a `ClusterError` within `timeout` s.

    Call it first thing in the program (before any other TensorFlow work), on every
    machine, with that machine's TF_CONFIG; the chief is task "chief" 0 or, without one,
    "worker" 0. `communication_options` is passed on (e.g. a `timeout_seconds` for every
    collective; none by default, so a paused chief never times out its workers).
    """
    jobs, kind, index = _read_tf_config()
    options = {"communication_options": communication_options}
    if len(jobs.get("chief", ())) + len(jobs.get("worker", ())) < 2:
        return tf.distribute.MultiWorkerMirroredStrategy(**options)
    _set_register_deadline(jobs, timeout)
    is_chief = kind == "chief" or (kind == "worker" and index == 0 and "chief" not in jobs)
    if is_chief:  # the others start their servers before they wait for the chief
        _wait_for_peers(jobs, (kind, index), timeout)
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(**options)
    except (tf.errors.DeadlineExceededError, tf.errors.UnavailableError) as err:
        leader = jobs["chief"][0] if "chief" in jobs else jobs["worker"][0]
        raise ClusterError(
            f"could not join the cluster within {timeout:g} s as {kind} {index}: the chief "
            f"at {leader} did not answer; start the same program there (TF_CONFIG task "
            f"{'chief' if 'chief' in jobs else 'worker'} 0) or fix the address"
        ) from err
