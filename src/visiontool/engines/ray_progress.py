"""What a cluster run says on stderr: a start line, progress as shards are committed (rows
done, rows/s, failures), each failure in the local command's words, warnings from the
replicas once each, and the summary. On a terminal the progress line is rewritten in place.
"""
from __future__ import annotations

import time

MAX_NAMED_FAILURES = 100  # failure lines printed per run (every failed row keeps its error)


class Reporter:
    """Progress, failures and the summary on stderr (the terminal while Ray's own output goes
    to its log)."""

    def __init__(self, stream, quiet: bool, total: int, done: int, failed_before: int, where: str):
        self.stream, self.quiet, self.total, self.done_before = stream, quiet, total, done
        self.failed = failed_before
        self.where = where
        self.rows = 0
        self.named = 0
        self.t0 = time.perf_counter()
        self.first: tuple[float, int] | None = None
        self.last = 0.0
        self.said: set[str] = set()
        self.tty = _isatty(stream)

    def _line(self, text: str, progress: bool = False) -> None:
        from visiontool.render.text import clean

        try:
            if progress and self.tty:
                self.stream.write("\r" + clean(text) + "\x1b[K")
            else:
                if self.tty and self.last:
                    self.stream.write("\r\x1b[K")
                self.stream.write(clean(text) + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def warn(self, message: str) -> None:
        if message not in self.said:
            self.said.add(message)
            self._line(f"visiontool: warning: {message}")

    def start(self, todo: int, plan) -> None:
        if not self.quiet:
            before = f", {self.done_before} already in {self.where}" if self.done_before else ""
            self._line(f"ray: {todo} of {self.total} images to do{before}; {plan.describe()}")
        self.t0 = time.perf_counter()

    def committed(self, entry, warnings: list[str]) -> None:
        if self.first is None:  # the replicas are up: the steady rate counts from here
            self.first = (time.perf_counter(), entry.rows)
        self.rows += entry.rows
        self.failed += entry.failed
        for w in warnings:
            for line in w.splitlines():
                self.warn(line)
        for msg in entry.errors:
            if self.named < MAX_NAMED_FAILURES:
                self._line(f"visiontool: error: {msg}")
            elif self.named == MAX_NAMED_FAILURES:
                self.warn("further failures are not listed here (each failed image's row carries its error)")
            self.named += 1
        now = time.perf_counter()
        if not self.quiet and (now - self.last >= (0.5 if self.tty else 2.0) or self.done_now == self.total):
            self.last = now
            self._line(self.progress(), progress=True)

    @property
    def done_now(self) -> int:
        return self.done_before + self.rows

    def progress(self) -> str:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        pct = 100.0 * self.done_now / max(self.total, 1)
        return (f"ray: {self.done_now}/{self.total} images ({pct:.0f}%), {self.rows / dt:.1f} images/s, "
                f"{self.failed} failed")

    def stop(self) -> None:
        if self.tty and self.last and not self.quiet:
            self._line(self.progress())
            self.last = 0.0

    def already(self, state) -> None:
        if not self.quiet:
            self._line(f"ray: all {self.total} images are already in {self.where} (nothing to do)")

    def done(self, s) -> None:
        if self.quiet:
            return
        where = f" on {s.plan.describe()}" if s.plan is not None else ""
        steady = ""
        if self.first is not None and self.rows > self.first[1]:
            dt = time.perf_counter() - self.first[0]
            steady = f", {(self.rows - self.first[1]) / max(dt, 1e-9):.2f} once the replicas were up"
        self._line(f"{s.written} image{'s' if s.written != 1 else ''} in {s.seconds:.1f} s "
                   f"({s.rows_per_s:.2f} images/s{steady}){where}: {s.total} of {s.total} images in {s.output_dir}, "
                   f"{s.failed} failed (gather them: visiontool merge {s.output_dir} -f coco)")


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
