"""Ctrl-C while training, raised where training stands still.

Python raises KeyboardInterrupt wherever the SIGINT lands.  In ``fit`` that
may be after a compiled step has consumed (donated) the carry and before its
result is assigned, and the parameters would be lost; ``DeferredInterrupts``
holds the interrupt until ``fit`` reaches a consistent point.
"""

from __future__ import annotations

import signal
import threading


class DeferredInterrupts:
    """While training: Ctrl-C (SIGINT) is remembered and raised as
    KeyboardInterrupt at the next ``check()``, a point where the carry, the
    steps done and their metrics agree.  Python raises KeyboardInterrupt
    where the signal lands, which may be after a compiled step has consumed
    (donated) the carry and before its result is assigned: the parameters
    would be lost.  A second Ctrl-C before a check raises at once.  Only in
    the main thread and over Python's own SIGINT handler; otherwise nothing
    changes."""

    def __init__(self):
        self.pending, self._previous = False, None

    def __enter__(self) -> DeferredInterrupts:
        if threading.current_thread() is threading.main_thread() and (
                signal.getsignal(signal.SIGINT) is signal.default_int_handler):  # fmt: skip
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.pending:
            raise KeyboardInterrupt
        self.pending = True

    def check(self) -> None:
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    def check_everywhere(self) -> None:
        """``check()`` agreed across processes (``jax.distributed``): every
        process raises when any of them holds a Ctrl-C, after one gather of
        the flags, so that a Ctrl-C reaching one process stops all of them
        at the same point instead of leaving the others waiting in the next
        step's collectives.  With one process, ``check()``."""
        from jdl.train.processes import process_flags

        if process_flags(self.pending).any():
            self.pending = False
            raise KeyboardInterrupt

    def __exit__(self, *exc_info) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        if exc_info[0] is None:
            self.check()
