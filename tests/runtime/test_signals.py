"""detector.runtime.signals.deferred: signals sent to the process during the block reach their handler once, after
it, also when another thread (tqdm's monitor, TensorBoard's writer) could take them."""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager

import pytest

from detector.runtime.signals import deferred

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals")


@contextmanager
def another_thread():
    """A thread that blocks no signal, alive for the block: the kernel may hand it a signal sent to the process."""
    done = threading.Event()
    thread = threading.Thread(target=done.wait, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@pytest.mark.parametrize("threads", ["main thread only", "another thread alive"])
def test_signals_during_the_block_are_handled_once_after_it(threads):
    received = []

    def note(signum, frame):
        received.append(signum)

    previous = signal.signal(signal.SIGUSR1, note)
    try:
        with another_thread() if threads == "another thread alive" else open(os.devnull):
            with deferred([signal.SIGUSR1]):
                os.kill(os.getpid(), signal.SIGUSR1)
                os.kill(os.getpid(), signal.SIGUSR1)
                time.sleep(0.2)  # time for another thread to take a signal, and for Python to run a handler
                inside = list(received)
            after = list(received)
            assert signal.getsignal(signal.SIGUSR1) is note  # restored
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert inside == [] and after == [signal.SIGUSR1]


def test_the_handler_is_restored_when_the_block_raises_and_ignored_signals_stay_ignored():
    previous = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    try:
        with pytest.raises(ZeroDivisionError), deferred([signal.SIGUSR2]):
            os.kill(os.getpid(), signal.SIGUSR2)
            1 / 0
        assert signal.getsignal(signal.SIGUSR2) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGUSR2, previous)
