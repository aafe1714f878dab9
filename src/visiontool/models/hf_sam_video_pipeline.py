"""The image encoder one frame ahead of the tracker, in a worker thread.

A video model's work per frame is two independent halves: the image encoder (needs only the
frame) and the memory-conditioned tracking step (needs the previous frames' results). While
the main thread tracks frame k, a worker thread preprocesses and encodes frame k+1 and puts
its features into the session's feature cache, which ``Sam2VideoModel`` reads before encoding
a frame itself. The worker runs its torch operators on one intra-op thread (OpenMP's thread
count is per thread), the tracker keeps the process's: a one-thread encoder wastes less on
synchronisation than a two-thread one (measured here: 3.5 s vs 2.2 s per SAM 2.1-tiny frame,
1.6x for twice the cores), and its work fills the cores while the tracker runs its serial parts.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterable, Iterator

import numpy as np


class Encoder:
    """Pixel values and (optionally ahead-of-time) vision features of frames for one VideoRun."""

    def __init__(self, run, threads: bool = True):
        self.run = run
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None
        if threads:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="visiontool-encoder",
                                            initializer=_one_intra_op_thread)

    def _prepare(self, k: int, rgb: np.ndarray, encode: bool):
        pv = self.run.pixel_values(rgb)
        if encode:
            self.run.encode(k, pv)
        return pv

    def features_for(self, k: int, rgb: np.ndarray):
        """Frame ``k``'s pixel values (the model encodes it itself)."""
        return self._prepare(k, rgb, encode=False)

    def ahead(self, frames: Iterable[tuple]) -> Iterator[tuple]:
        """``(k, index, t, rgb)`` -> ``(k, index, t, rgb, pixel values)``; frame k+1 is encoded
        by the worker while the caller works on frame k."""
        it = iter(frames)
        nxt = next(it, None)
        if nxt is None:
            return
        fut = self._submit(nxt)
        while nxt is not None:
            cur, cur_fut = nxt, fut
            pv = cur_fut.result() if cur_fut is not None else self._prepare(cur[0], cur[3], False)
            failure = None
            try:
                nxt = next(it, None)
            except Exception as exc:  # noqa: BLE001 - a broken video: the current frame still counts
                nxt, failure = None, exc
            fut = self._submit(nxt) if nxt is not None else None
            yield (*cur, pv)
            if failure is not None:
                raise failure

    def _submit(self, item) -> Future | None:
        if self._pool is None:
            return None
        return self._pool.submit(self._prepare, item[0], item[3], True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _one_intra_op_thread() -> None:
    import torch

    torch.set_num_threads(1)  # this thread's OpenMP team only; the tracker's is unchanged
