"""A Ctrl-C that lands while the kernel waits for a worker leaves the worker's state true."""

import os
import signal
import threading

import pytest

from tapemagic.threads import Worker


def test_an_interrupted_wait_does_not_take_a_running_worker_for_ended():
    release = threading.Event()
    worker = Worker(release.wait, "tapemagic-test")
    worker.start()
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        worker.wait(10)
    assert not worker.ended and worker.is_alive()
    release.set()
    assert worker.wait(5) and worker.ended


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_worker_that_raises_has_ended():
    def fail():
        raise ValueError("boom")

    worker = Worker(fail, "tapemagic-test")
    worker.start()
    assert worker.wait(5) and worker.ended
    worker.join(5)  # its error is reported (and ignored) within this test
