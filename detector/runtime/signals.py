"""Signals in training processes: which ones stop a run, loader workers that leave them to the main process, and
sections of code that no signal interrupts half-way.

What a cluster does when it ends a job: SLURM (``scancel``, pre-emption, the time limit), Kubernetes (pod
deletion) and a closed terminal send SIGTERM, SIGINT or SIGHUP to every process of the job's process group,
DataLoader workers included. Torch's workers die on SIGTERM by default, and the main process then meets
"DataLoader worker ... killed by signal" at any point of a step (torch raises it from its SIGCHLD handler,
between any two bytecodes, even inside ``optimizer.step()``). So:

* :func:`worker_init_ignoring_stop_signals` wraps a loader's ``worker_init_fn``: the worker ignores the stop
  signals and keeps serving batches while the main process finishes its step and writes its checkpoint; the
  worker goes when its main process does.
* Workers that ignore SIGTERM cannot be ended by ``multiprocessing``'s exit handler, which terminates daemonic
  children with SIGTERM and then joins them (torch leaves its workers to it when the interpreter exits with
  an iterator still open, e.g. a persistent training loader): that join would wait for ever. So building such a
  loader registers :func:`_kill_loader_workers_at_exit`, which runs before that handler and does the same with SIGKILL
  (the main process is exiting: its daemonic children hold nothing left to save).
* :func:`deferred` blocks signals (``pthread_sigmask``) around a section that must not be cut in two: they stay
  pending and are delivered, in full, when the section ends. A worker started inside such a section inherits the
  blocked mask, which closes the window between its start and its ``worker_init_fn``.

POSIX only; on Windows (no SIGHUP, no signal masks) :func:`deferred` only swaps the handlers and SIGHUP is left out.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import multiprocessing
import signal
import threading
from collections.abc import Callable, Iterable, Iterator

__all__ = ["STOP_SIGNALS", "CHILD_SIGNALS", "ignore_stop_signals", "worker_init_ignoring_stop_signals",
           "shut_down_loader_workers", "deferred"]

STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name))
# A loader worker's death reaches the main process as SIGCHLD (torch's handler raises from it).
CHILD_SIGNALS: tuple[signal.Signals, ...] = tuple(getattr(signal, name) for name in ("SIGCHLD",)
                                                  if hasattr(signal, name))
_HAS_MASKS = hasattr(signal, "pthread_sigmask")


def ignore_stop_signals() -> None:
    """Ignore SIGTERM, SIGINT and SIGHUP in this process (and unblock them, so none stays pending)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)  # also discards one already pending
    if _HAS_MASKS:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _init_worker(worker_id: int, then: Callable[[int], None] | None) -> None:
    ignore_stop_signals()
    if then is not None:
        then(worker_id)


def _kill_loader_workers_at_exit() -> None:
    """What multiprocessing's exit handler does to daemonic children (DataLoader workers are), with SIGKILL
    instead of the SIGTERM they ignore."""
    children = [child for child in multiprocessing.active_children() if child.daemon]
    if children and CHILD_SIGNALS:  # torch's SIGCHLD handler would report each as a worker failure
        signal.signal(CHILD_SIGNALS[0], signal.SIG_DFL)
    for child in children:
        child.kill()
    for child in children:
        child.join(timeout=5.0)


_exit_hook_registered = False


def shut_down_loader_workers(loader) -> None:
    """End a DataLoader's persistent workers now (in a fraction of a second), instead of leaving them to the
    interpreter's exit, where torch skips its own shutdown and they would only go with the exit hook."""
    iterator = getattr(loader, "_iterator", None)  # the persistent iterator torch keeps between epochs
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
        loader._iterator = None


def worker_init_ignoring_stop_signals(then: Callable[[int], None] | None = None) -> Callable[[int], None]:
    """A DataLoader ``worker_init_fn`` that makes the worker ignore the stop signals, then calls ``then``.

    torch installs its own SIGTERM handler in each worker (print, then die) before calling ``worker_init_fn``;
    this replaces it. A ``functools.partial`` of a module-level function: it pickles for ``spawn`` workers.
    Called in the main process, it also registers the exit hook that ends such workers (module docstring).
    """
    global _exit_hook_registered
    if not _exit_hook_registered:
        atexit.register(_kill_loader_workers_at_exit)  # after multiprocessing's own: runs before it
        _exit_hook_registered = True
    return functools.partial(_init_worker, then=then)


@contextlib.contextmanager
def deferred(signals: Iterable[int] = STOP_SIGNALS + CHILD_SIGNALS) -> Iterator[None]:
    """Hold ``signals`` back while the block runs; they are delivered, once each, when it ends.

    Blocking them (``pthread_sigmask``) covers only the calling thread, and the kernel hands a signal sent to the
    process to any thread that does not block it (tqdm's monitor, TensorBoard's writer, torch's threads), after
    which Python runs the handler in the main thread at once. So in the main thread (the only one that runs
    Python handlers) each signal's Python handler is also swapped, for the block, for one that only notes the
    signal; noted signals are raised again when the block ends. Nested use keeps the outer hold.
    """
    signals = tuple(signals)
    noted: list[int] = []
    swapped = {}
    if threading.current_thread() is threading.main_thread():
        for signum in signals:
            handler = signal.getsignal(signum)
            if callable(handler):  # a Python handler (not SIG_DFL / SIG_IGN, nor one set from C)
                swapped[signum] = handler
                signal.signal(signum, lambda received, frame: noted.append(received))
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals) if _HAS_MASKS else None
    try:
        yield
    finally:
        for signum, handler in swapped.items():
            signal.signal(signum, handler)
        if previous is not None:  # signals held by the mask are delivered now, to the handlers just restored
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        for signum in dict.fromkeys(noted):
            signal.raise_signal(signum)
