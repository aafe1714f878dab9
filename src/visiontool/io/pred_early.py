"""Checking a large segm results file in a second process while the engine reads it.

visiontool checks a COCO results file before trusting an engine's numbers for it (a
malformed record is named instead of scored silently differently or crashing the engine);
the engine then parses the same file itself. hotcoco's ``load_res`` (~0.5 s for COCO-val-sized
masks, on ~1.6 cores) and the check (~0.25 CPU-s) both hold the GIL the whole time, so a thread
cannot overlap them -- but another process can use what ``load_res`` leaves of the cores. The first half of
the check needs no ground truth (:func:`visiontool.io.pred_fast.segm_facts`): :func:`start`
forks a child that computes it from the moment ``evaluate`` knows the file, while this process
reads the ground truth and the engine reads the results; :meth:`EarlyCheck.facts` collects the
answer (a few small arrays) before anything is evaluated, and the second, cheap half (ids
against the ground truth) runs here. (bbox does not fork: its check runs on the rows the
engine's reader parsed, :class:`visiontool.io.pred_fast.AfterEngineRead`; a child measured no
faster there.)

The same fork (:func:`fork_call`) runs the bbox ground truth's byte scans while ultrafast's
reader parses that file (:func:`visiontool.services.ground_truth._native_gt`).

A fork is used only where it is safe and pays: Linux, two or more CPUs usable, no other
Python thread in the process (a fork copies the calling thread only: a lock another thread
holds would stay held in the child), and a regular file of at least ``FORK_MIN_BYTES``.
Otherwise :func:`start` returns None and the check runs in this process, before the engine,
as it always did. A child that fails in any way (killed, out of memory) reads as "not
plain valid": the file then takes the precise path, which names the offending record.
"""
from __future__ import annotations

import os
import pickle
import sys

FORK_MIN_BYTES = 4 << 20  # below this the check takes under ~10 ms: not worth a process


def can_fork() -> bool:
    import threading

    if sys.platform != "linux" or not hasattr(os, "fork") or threading.active_count() != 1:
        return False
    try:
        return len(os.sched_getaffinity(0)) >= 2
    except (AttributeError, OSError):
        return (os.cpu_count() or 1) >= 2


class EarlyCheck:
    """A forked child computing a results file's facts; :meth:`facts` waits for them."""

    def __init__(self, pid: int, fd: int):
        self.pid, self._fd = pid, fd
        self._facts: dict | None = None
        self._done = False

    def facts(self) -> dict | None:
        """The child's facts, or None (the file is not plain valid, or the child failed)."""
        if not self._done:
            self._done = True
            with os.fdopen(self._fd, "rb") as fh:
                payload = fh.read()
            _, status = os.waitpid(self.pid, 0)
            if payload and os.waitstatus_to_exitcode(status) == 0:
                self._facts = pickle.loads(payload)  # written by our own child
        return self._facts

    def cancel(self) -> None:
        """Stop and reap the child if its answer was never collected (an error or Ctrl-C
        before the engine ran)."""
        if self._done:
            return
        self._done = True
        import signal

        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.close(self._fd)
        os.waitpid(self.pid, 0)


class Pending:
    """The summary of a file whose facts a child is computing: :meth:`result` waits for them
    and checks them against the ground truth (None: not plain valid)."""

    def __init__(self, early: EarlyCheck, gt):
        self.early, self.gt = early, gt

    def result(self, rows=None) -> dict | None:
        """The child's facts against the ground truth (``rows``: unused, the child read the file)."""
        from visiontool.io.pred_fast import against_gt

        return against_gt(self.early.facts(), self.gt)

    def cancel(self) -> None:
        self.early.cancel()


def facts_function(iou_type: str):
    """The GT-free half of the fast check for ``iou_type`` (None: no fast path)."""
    from visiontool.io import pred_fast

    if iou_type == "segm":
        return pred_fast.segm_facts  # the child imports msgspec and builds its schema (~20 ms off this process)
    return None


def start(pred, iou_type: str) -> EarlyCheck | None:
    """Fork a child computing the facts of the results file ``pred`` (see the module
    docstring), or None where that is not done."""
    if not isinstance(pred, (str, os.PathLike)):
        return None
    fn = facts_function(iou_type)
    return fork_call(fn, os.fspath(pred)) if fn is not None else None


def fork_call(fn, path: str, min_bytes: int | None = None) -> EarlyCheck | None:
    """A forked child computing ``fn(path)`` (a small picklable answer) while this process goes
    on; None where a fork is not safe or does not pay (:func:`can_fork`; ``path`` not a regular
    file of at least ``min_bytes``, default :data:`FORK_MIN_BYTES`). Also used for the bbox
    ground truth's byte scans (:func:`visiontool.services.ground_truth._native_gt`)."""
    min_bytes = FORK_MIN_BYTES if min_bytes is None else min_bytes
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    import stat

    if not stat.S_ISREG(st.st_mode) or st.st_size < min_bytes or not can_fork():
        return None
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_fd)
        os.close(write_fd)
        return None
    if pid == 0:  # the child: compute, send, and leave without running any of the parent's exit code
        code = 1
        try:
            import gc

            gc.freeze()  # the parent's objects: never traversed (no copy-on-write of their pages)
            os.close(read_fd)
            payload = pickle.dumps(fn(path), protocol=pickle.HIGHEST_PROTOCOL)
            view = memoryview(payload)
            while view:
                view = view[os.write(write_fd, view):]
            code = 0
        except BaseException:  # noqa: BLE001  (anything: the parent reads "no facts")
            pass
        finally:
            os._exit(code)
    os.close(write_fd)
    return EarlyCheck(pid, read_fd)
