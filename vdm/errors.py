"""The errors a run stops with: one line naming the problem and the fix, and an exit code.

`python -m vdm.main` prints `vdm: <kind>: <message>` for any of these (no
traceback) and exits with `exit_code`:

| exit code | meaning                                                           |
|-----------|-------------------------------------------------------------------|
| 0         | finished: results.json written                                    |
| 1         | an error below (data, checkpoint, workdir, non-finite loss)       |
| 2         | a config key or value is invalid                                  |
| 75        | preempted (SIGTERM / SIGINT): checkpoint written, rerun to resume |
"""

from __future__ import annotations

PREEMPTED_EXIT_CODE = 75  # sysexits EX_TEMPFAIL: "temporary failure, try again"


class VdmError(Exception):
    kind = "error"
    exit_code = 1


class ConfigError(VdmError, ValueError):
    """A config key or value is invalid; the message names the key."""

    kind = "config error"
    exit_code = 2


class DataError(VdmError):
    """A dataset is unknown, not prepared, or does not match the config."""

    kind = "data error"


class DatasetNotPrepared(DataError):
    pass


class CheckpointError(VdmError):
    """A checkpoint cannot be written, found, or does not fit this config."""

    kind = "checkpoint error"


class WorkdirError(VdmError):
    kind = "workdir error"


class NonFiniteLoss(VdmError):
    """A training step produced a NaN / inf loss or gradient (training.on_nonfinite = 'stop')."""

    kind = "non-finite loss"


class Preempted(VdmError):
    """SIGTERM / SIGINT: the run saved a checkpoint and can be resumed with the same command."""

    kind = "preempted"
    exit_code = PREEMPTED_EXIT_CODE
