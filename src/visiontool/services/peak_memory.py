"""Peak memory a block of work adds (resident memory on CPU, allocated memory on CUDA), and
handing freed memory back to the OS."""
from __future__ import annotations

import gc
import os
import threading


def release_memory(collect: bool = True) -> None:
    """Hand freed heap pages back to the OS (glibc keeps them after the validation pass over
    a large file, which would otherwise add to the engine's peak RSS). ``collect=False``
    skips the garbage collection (~10 ms) when no Python garbage is expected."""
    if collect:
        gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak resident memory (MB) a block adds on top of what the process held when it started.

    On Linux the kernel's high-water mark is reset (``/proc/self/clear_refs`` <- 5) and read
    back from ``VmHWM``; where that is not allowed, a thread samples ``/proc/self/statm``
    every 5 ms. On CUDA the device's peak allocated memory is reported instead (the weights
    and activations live there). ``mb`` is None where neither works.

    Garbage is collected (and, on CPU, freed heap handed back) before the starting size is
    read: otherwise an earlier object freed by a collection that happens to run inside the
    block lowers the resident size under the starting figure and hides what the block added.
    """

    def __init__(self, device: str = "cpu"):
        self.device = str(device)
        self.mb: float | None = None
        self._base = 0
        self._peak = 0
        self._mode = "none"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0

    @staticmethod
    def _hwm() -> int:
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError):
            pass
        return 0

    def __enter__(self) -> "PeakMemory":
        if self.device.startswith("cuda"):
            import torch

            gc.collect()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            self._mode = "cuda"
            return self
        release_memory()
        self._base = self._rss()
        if self._base == 0:
            return self
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self._mode = "hwm"
        except OSError:
            self._mode = "sample"
            self._peak = self._base
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, self._rss())

    def __exit__(self, *exc) -> bool:
        if self._mode == "cuda":
            import torch

            torch.cuda.synchronize()
            self.mb = max(0, torch.cuda.max_memory_allocated() - self._base) / 2 ** 20
        elif self._mode == "hwm":
            self.mb = max(0, self._hwm() - self._base) / 2 ** 20
        elif self._mode == "sample":
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, self._rss())
            self.mb = max(0, self._peak - self._base) / 2 ** 20
        return False
