"""Concurrent CPU forward passes: a detector's windows on several threads, results in order.

On a CPU, one forward pass split over all cores by torch's OpenMP stalls at every barrier
while another process (Ray's, the image decoder, the desktop) holds one of the cores: the
thread left running waits for the preempted one. Two forward passes on one thread each do
not wait for each other; torch releases the GIL inside its kernels, so they overlap. Measured
on this repository's 2-core machine (docs/detect.md): the tiny DETR 21.8 / 22.7 images/s
against 21.7 / 21.1 in the local command, and 20.4 against 17.0-18.3 in a Ray replica beside
Ray's own processes.

Used only where the adapter declares ``"concurrent"`` (its ``predict`` keeps no per-call state
on the object: the transformers detectors) and the model runs on the CPU with torch's own
threads; everything else keeps one forward pass at a time. ``VISIONTOOL_CPU_STREAMS``
overrides the number of streams (1 turns this off). Each stream gets an equal share of torch's
threads (``torch.get_num_threads() // streams``, at least 1) for the run, restored after it.
"""
from __future__ import annotations

import contextlib
import sys
from collections import deque
from typing import Any, Callable, Iterable, Iterator

from visiontool.settings import whole_number_env
from visiontool.types import Timings

STREAMS_ENV = "VISIONTOOL_CPU_STREAMS"
DEFAULT_STREAMS = 2


def requested_streams() -> int | None:
    """``VISIONTOOL_CPU_STREAMS`` as a number (None when unset); anything else is exit 2."""
    return whole_number_env(STREAMS_ENV, "a whole number of forward streams >= 1 (1: one forward pass at a time)")


def plan(info) -> tuple[int, int]:
    """``(streams, torch threads per stream)`` for a loaded model; ``(1, 0)``: as it is."""
    requested = requested_streams()
    if not info.can("concurrent") or str(info.device) != "cpu" or info.runtime != "torch":
        return 1, 0
    torch = sys.modules.get("torch")
    if torch is None:
        return 1, 0
    threads = int(torch.get_num_threads())
    streams = min(requested if requested is not None else DEFAULT_STREAMS, threads)
    if streams <= 1:
        return 1, 0
    return streams, max(1, threads // streams)


@contextlib.contextmanager
def torch_threads(count: int):
    """torch's intra-op threads set to ``count`` inside the block (each new thread takes the
    process-wide number on its first parallel region), restored after it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


Window = list
Pass = Callable[[Window, Timings], Any]


def run_in_order(windows: Iterable[Window], forward: Pass, timings: Timings, streams: int,
                 threads: int) -> Iterator[tuple[Window, Any]]:
    """``(window, forward(window, its timings))`` for every window, in order, with up to
    ``streams`` passes running at once. Each pass adds to its own Timings, merged into
    ``timings`` as its window is handed on (so stage times are per stream and may add up to
    more than the wall). A pass that raises re-raises here at its window's turn; on any exit
    (an error, an interrupt, the consumer stopping) passes not yet started are dropped and the
    running ones finish before this returns, so the model is never used behind the caller's back."""
    from concurrent.futures import ThreadPoolExecutor

    def one(window: Window):
        own = Timings()
        return forward(window, own), own

    pending: deque = deque()
    with torch_threads(threads), ThreadPoolExecutor(streams, thread_name_prefix="visiontool-forward") as pool:
        try:
            for window in windows:
                pending.append((window, pool.submit(one, window)))
                if len(pending) >= streams:
                    yield _finish(pending.popleft(), timings)
            while pending:
                yield _finish(pending.popleft(), timings)
        finally:
            for _, future in pending:
                future.cancel()


def _finish(entry, timings: Timings) -> tuple[Window, Any]:
    window, future = entry
    result, own = future.result()
    timings.preprocess += own.preprocess
    timings.inference += own.inference
    timings.postprocess += own.postprocess
    return window, result
