"""Bounded quoting of user values in error messages (docs/reliability.md, "Bounded messages").

A message quotes what the user wrote so they can find it, but a value can be huge (a YAML
alias bomb expands a few hundred bytes into gigabytes; a 300-character name): every quoted
value goes through :func:`quote`, which bounds the work (``reprlib``) and the length.
"""
from __future__ import annotations

import reprlib
from typing import Any

QUOTE_LIMIT = 80

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxdict, _repr.maxlist, _repr.maxtuple, _repr.maxset = 3, 6, 8, 8, 6
_repr.maxstring, _repr.maxother, _repr.maxlong = QUOTE_LIMIT, QUOTE_LIMIT, 40


def shorten(text: str, limit: int = QUOTE_LIMIT) -> str:
    """`text` cut to `limit` characters, saying how long it was."""
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"


def quote(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """repr(value) bounded in time and length: nested containers are elided (reprlib) and the
    result is cut to `limit` characters."""
    if isinstance(value, str):
        return repr(value) if len(value) <= limit else f"{value[:limit]!r}… ({len(value)} characters)"
    text = _repr.repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def duration(seconds: float) -> str:
    """A wait as people read it: 42 s, 3 min 5 s, 1 h 20 min."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s" if s < 600 else f"{round(s / 60)} min"
    return f"{s // 3600} h {(s % 3600) // 60} min"


class Clock:
    """Progress lines for a command's stages: what is being done, time elapsed and, where the
    stage counts items, an estimate of what is left (elapsed × remaining / done). Inside
    :meth:`heartbeat`, a stage that runs long without a line gets one every HEARTBEAT seconds
    (docs/architecture.md, progress)."""

    HEARTBEAT = 10.0

    def __init__(self, log, prefix: str, every: float = 5.0) -> None:
        import time

        self._now = time.perf_counter
        self.log, self.prefix, self.every = log, prefix, every
        self.t0 = self._now()
        self._last = -1e9
        self._spoke = self.t0
        self.current = "starting"

    def say(self, line: str) -> None:
        """Log a line through this clock (any line counts as progress for the heartbeat)."""
        self._spoke = self._now()
        if self.log:
            self.log(line)

    def heartbeat(self, every: float | None = None):
        """Context manager: while it is open, a line `prefix: still <stage> (… elapsed)` whenever
        `every` seconds (HEARTBEAT) pass without one."""
        import contextlib
        import threading

        period = self.HEARTBEAT if every is None else every

        @contextlib.contextmanager
        def beating():
            if not self.log:
                yield self
                return
            stop = threading.Event()

            def run() -> None:
                while not stop.wait(min(period, 1.0) / 2):
                    if self._now() - self._spoke >= period:
                        self.say(f"{self.prefix}: still {self.current} ({duration(self.elapsed)} elapsed)")

            t = threading.Thread(target=run, name=f"{self.prefix}-heartbeat", daemon=True)
            t.start()
            try:
                yield self
            finally:
                stop.set()
                t.join()

        return beating()

    def mark(self) -> float:
        """Now, on this clock: pass it as `since` to time a counted stage on its own."""
        return self._now()

    @property
    def elapsed(self) -> float:
        return self._now() - self.t0

    def stage(self, what: str) -> None:
        """One line: `prefix: what (12 s elapsed)`."""
        self.current = what
        self.say(f"{self.prefix}: {what} ({duration(self.elapsed)} elapsed)")

    def tick(self, what: str, done: int, total: int, since: float | None = None) -> None:
        """`prefix: what done/total (elapsed, about … left)`, at most once every `every` seconds
        (always for the last item). `since`: when this counted stage began (default: the start)."""
        now = self._now()
        self.current = f"{what} ({done}/{total})"
        if not self.log or (done < total and now - self._last < self.every):
            return
        self._last = now
        start = self.t0 if since is None else since
        spent = now - start
        left = spent * (total - done) / done if done else None
        self.say(f"{self.prefix}: {what} {done}/{total} ({duration(now - self.t0)} elapsed"
                 + (f", about {duration(left)} left)" if left is not None and done < total else ")"))
