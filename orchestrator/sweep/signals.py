"""Stopping a sweep (docs/reliability.md, signals): SIGINT and SIGTERM stop the trials the way
Tune's own Ctrl-C does, with the tracking callback told first, within a bounded grace period;
a second signal (or the grace period running out) writes what it can and exits at once.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable


class Interrupted(RuntimeError):
    """The driver was stopped by SIGINT/SIGTERM; runs are marked KILLED, the sweep can resume."""

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        self.signame = signal.Signals(signum).name
        super().__init__(f"interrupted by {self.signame}")



HARD_EXIT_WRITE_S = 20.0  # at most this long writing queued records before a forced exit (docs/reliability.md)


def _hard_exit(signum: int, resume_command: str | None) -> None:
    """Last resort (second signal, or the graceful stop took too long): write what can be
    written, say how to resume, exit 128 + signal."""
    import signal

    from orchestrator.tracking import ACTIVE

    name = signal.Signals(signum).name
    for cb in list(ACTIVE):
        try:
            cb.interrupted = cb.interrupted or name
            cb.retry_delays = ()
            cb._at_exit(timeout=HARD_EXIT_WRITE_S)
        except Exception:
            pass
    print(interrupt_message(name, resume_command), file=sys.stderr, flush=True)
    os._exit(128 + signum)


def interrupt_message(signame: str, resume_command: str | None) -> str:
    msg = f"l2lda-tune: interrupted by {signame}; unfinished runs are marked KILLED in MLflow"
    return msg + (f"; continue the sweep with:\n  {resume_command}" if resume_command else "")


class StopOnSignals:
    """SIGINT and SIGTERM stop the sweep the way Tune's own Ctrl-C does (trials stopped, the
    experiment state saved one last time), but for both signals, with the tracking callback told
    first so it records the trials as KILLED, and with a bounded grace period: a second signal,
    or `grace` seconds, end the driver at once (exit 128 + signal)."""

    def __init__(self, say: Callable[[str], None], resume_command: str | None, grace: float) -> None:
        self.say, self.resume_command, self.grace = say, resume_command, grace
        self.signum: int | None = None
        self._old: dict[int, Any] = {}
        self._env: str | None = None

    def __enter__(self) -> "StopOnSignals":
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return self
        # Tune's SIGINT handler would take SIGINT from us; its SIGUSR1 handler stays and is what
        # we call to stop the run loop.
        self._env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def reinstall(self) -> None:
        """Again after ray.init: Ray's core worker installs its own SIGTERM handler (which
        dumps a stack and aborts) over ours."""
        import signal

        if self._old:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self._handle)

    def __exit__(self, *exc: Any) -> None:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)
        if self._old:
            if self._env is None:
                os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
            else:
                os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self._env

    def _handle(self, signum: int, frame: Any) -> None:
        import signal
        import threading

        from orchestrator.tracking import ACTIVE

        if self.signum is not None:
            _hard_exit(self.signum, self.resume_command)
        self.signum = signum
        name = signal.Signals(signum).name
        print(f"l2lda-tune: {name} received: stopping the trials and writing the records "
              f"(send it again to exit at once)", file=sys.stderr, flush=True)
        for cb in ACTIVE:
            cb.interrupt(name)
        threading.Thread(target=self._watchdog, daemon=True).start()
        tune_stop = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
        if callable(tune_stop) and tune_stop is not self._handle:
            tune_stop(signal.SIGUSR1, frame)  # Tune's run loop ends after this step
        else:
            raise KeyboardInterrupt  # not in Tune's loop yet: stop where we are

    def _watchdog(self) -> None:
        time.sleep(self.grace)
        _hard_exit(self.signum or 15, self.resume_command)



def stop_name(signum: int) -> str:
    import signal

    return signal.Signals(signum).name
