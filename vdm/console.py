"""A quiet console: the libraries' lines for situations a run expects are dropped, real warnings stay.

A normal run prints its header line, a progress bar, a line per eval and its
result lines. tensorflow-datasets, orbax and absl log routine events at
WARNING (a bundled dataset built the first time, a checkpoint save waiting for
the previous one); `quiet()` filters exactly those messages and lowers the
libraries' INFO chatter, so any other warning still reaches the user.
`python -m vdm.main --verbose` leaves every library log as it is.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys

# Substrings of library log messages that describe expected events, not problems.
EXPECTED_MESSAGES = (
    "has no dataset_info.json",  # tfds, while a bundled dataset is built the first time
    "Downloading and preparing dataset",
    "downloaded and prepared to",
    "Waiting for previous save",  # orbax: a save waits for the previous asynchronous one
    "Constructing tf.data.Dataset",
    "Task exception was never retrieved",  # asyncio, for orbax's read of a damaged checkpoint (reported in one line)
)


class _DropExpected(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to judge
            return True
        return not any(text in message for text in EXPECTED_MESSAGES)


_FILTER = _DropExpected()


def quiet() -> None:
    """Drops the EXPECTED_MESSAGES from every logger and handler, and library INFO logs. Idempotent.

    (XLA's C++ log level, TF_CPP_MIN_LOG_LEVEL, must be set before jax is imported: `vdm.main.cli` does.)
    """
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    for logger in (logging.getLogger(), logging.getLogger("absl"), absl_logging.get_absl_logger()):
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
        for handler in logger.handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
    handler = absl_logging.get_absl_handler()
    if _FILTER not in handler.filters:
        handler.addFilter(_FILTER)
    if sys.unraisablehook is not _drop_closed_event_loop:
        _drop_closed_event_loop.default = sys.unraisablehook
        sys.unraisablehook = _drop_closed_event_loop


def _drop_closed_event_loop(unraisable) -> None:
    """sys.unraisablehook without one expected case: after orbax fails to read a damaged checkpoint (reported by vdm
    in one line), tensorstore's reads still in flight finish on threads whose asyncio loop has closed, and each
    raises RuntimeError('Event loop is closed') where nothing can catch it. Anything else goes to the previous hook."""
    error = unraisable.exc_value
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
        return
    _drop_closed_event_loop.default(unraisable)


_drop_closed_event_loop.default = sys.__unraisablehook__


@contextlib.contextmanager
def silenced_stdout():
    """Swallows what a library prints to stdout inside the block (tfds announces a build with print)."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield
