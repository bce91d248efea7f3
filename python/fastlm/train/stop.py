"""SIGTERM during training: finish the step, write a checkpoint, stop.

A cluster that preempts or cancels a job (Slurm's ``scancel``, a Kubernetes eviction, ``torchrun``
passing its own SIGTERM on to the ranks) sends SIGTERM and waits a grace period before SIGKILL.
Without a handler the process ends at once and the steps since the last checkpoint are lost; with
`StopOnSignal` the first SIGTERM only raises a flag, the training loop stops after the step in progress
with a checkpoint (every rank at the same step: the flag travels with the step's all-reduce), and
``fastlm-train`` exits with 143 (128 + SIGTERM) so that a script can tell a stopped run from a
finished one. A second SIGTERM ends the process at once, as before.

The handler is installed for the whole run but acts only once `arm` is called (the trainer arms it as
the training loop starts): a SIGTERM during setup (data preparation, model build) still ends the
process at once, as there is nothing to save. Handlers are installed only in the main thread and only
over the default action: a handler the embedding program installed is left alone.
"""

from __future__ import annotations

import os
import signal
import threading


class StopOnSignal:
    """Context manager: ``requested`` turns True at the first SIGTERM received inside it once armed.

    >>> with StopOnSignal() as stop:
    ...     stop.arm()
    ...     stop.requested
    False
    """

    SIGNALS = ("SIGTERM",)

    def __init__(self):
        self.requested = False
        self.armed = False
        self._previous: dict[int, object] = {}

    def arm(self) -> None:
        """From now on a SIGTERM asks for a stop instead of ending the process."""
        self.armed = True

    def _handle(self, signum, frame) -> None:
        signal.signal(signum, signal.SIG_DFL)  # the next one ends the process at once
        if not self.armed:  # nothing to save yet: the default action, now
            os.kill(os.getpid(), signum)
            return
        self.requested = True  # no printing here: the main thread may be inside a write (reentrant I/O)

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                signum = getattr(signal, name, None)
                if signum is not None and signal.getsignal(signum) in (signal.SIG_DFL, None):
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
