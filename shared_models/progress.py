"""Progress of long local work (a site's scan, local training, prediction, a demo's rounds), for the person watching.

On a terminal: a tqdm bar on stderr. Otherwise (site containers log to files): a plain line at most every
``FEDCHEST_PROGRESS_SECONDS`` seconds (default 10) and one when the work ends, e.g.
``[progress] check site-a: decode 1200/5000 files (40.1 files/s, ETA 1m35s)``. ``FEDCHEST_PROGRESS=0`` turns it
off. Progress goes to the local stream only: nothing of it enters the registry, a metric or any message sent.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

T = TypeVar("T")
INTERVAL_ENV, SWITCH_ENV = "FEDCHEST_PROGRESS_SECONDS", "FEDCHEST_PROGRESS"


def _interval() -> float:
    raw = os.environ.get(INTERVAL_ENV, "10")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{INTERVAL_ENV}={raw!r}: expected a number of seconds") from None
    if value < 0:
        raise ValueError(f"{INTERVAL_ENV}={raw!r}: expected a number of seconds >= 0")
    return value


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """Counts units of work; ``update(n, **fields)`` after each step (fields such as ``loss=0.31`` are shown)."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "it", stream: IO[str] | None = None,
                 interval: float | None = None, terminal: bool | None = None) -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.stream = stream if stream is not None else sys.stderr
        self.interval = _interval() if interval is None else interval
        self.enabled = os.environ.get(SWITCH_ENV, "1") != "0"
        if terminal is None:
            terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self.n, self.fields = 0, {}
        self.start = self.last = time.monotonic()
        self.bar = None
        if self.enabled and terminal:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=f" {unit}", file=self.stream, leave=False,
                            dynamic_ncols=True)

    def update(self, n: int = 1, **fields: Any) -> None:
        self.n += n
        self.fields.update(fields)
        if not self.enabled:
            return
        if self.bar is not None:
            if fields:
                self.bar.set_postfix({k: _shown(v) for k, v in fields.items()}, refresh=False)
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._line(now)

    def _line(self, now: float, done: bool = False) -> None:
        elapsed = now - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        timing = f"{rate:.1f} {self.unit}/s" if rate >= 0.1 else f"{rate * 60:.2g} {self.unit}/min"
        if done:
            timing += f", {_duration(elapsed)}"
        elif self.total is not None and rate > 0:
            timing += f", ETA {_duration(max(self.total - self.n, 0) / rate)}"
        extra = "".join(f", {k} {_shown(v)}" for k, v in self.fields.items())
        print(f"[progress] {self.desc}: {count} {self.unit} ({timing}{extra}){' done' if done else ''}",
              file=self.stream, flush=True)

    def close(self) -> None:
        """Ends the bar; in plain mode a final line, but only if the work lasted longer than one interval (short
        work stays silent)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            return
        now = time.monotonic()
        if now - self.start >= self.interval:
            self._line(now, done=True)
        self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def track(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it", **kwargs: Any) -> Iterator[T]:
    """``items``, reporting one unit of progress per item."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(desc, total, unit, **kwargs) as progress:
        for item in items:
            yield item
            progress.update()
