"""SIGTERM / SIGINT handling for the training loop: finish the step, checkpoint, exit 75.

Cluster schedulers (SLURM, Kubernetes, TPU maintenance) send SIGTERM some time
before killing a job. Inside `PreemptionGuard` the first signal only sets
`requested`; the loop checks it after each compiled call, writes a checkpoint
and calls `exit`, which raises `Preempted` (exit code 75 from the CLI). Once
`checkpointed` is set (the final state is saved), or on a second signal, the
handler raises `Preempted` at once: nothing is lost that a resume cannot redo.
"""

from __future__ import annotations

import signal
import sys
import threading

from vdm.errors import Preempted

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionGuard:
    def __init__(self):
        self.requested = False
        self.signal_name = None
        self.checkpointed = False
        self._previous = {}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested or self.checkpointed:
            raise Preempted(f"{name}: stopped; the latest complete checkpoint is kept, run the same command to resume")
        self.requested, self.signal_name = True, name
        print(f"vdm: {name} received: finishing the current step, then writing a checkpoint", file=sys.stderr, flush=True)

    def exit(self, message: str):
        raise Preempted(message)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        return False
