"""A stop that cannot finish ends the process, as ``kill -9`` would.

A worker or trainer asked to stop finishes what it holds first: faust waits for the batch in hand, the
trainer publishes what it learned. With the broker gone both wait for an acknowledgement that does not
come (a worker was still stopping 150 s after SIGTERM). Neither needs to: what a process had not
committed is read again by the next start (the fault suite kills workers with ``kill -9`` and loses
nothing; the trainer resumes from its checkpoint). So a thread watches the stop and, once it has lasted
``Settings.stop_grace_s``, says so and exits. A thread, since the event loop is what may be stuck.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable


def exit_if_stop_outlasts(
    stopping: Callable[[], bool], grace_s: float, log: logging.Logger, resumes: str
) -> threading.Thread:
    """Start a daemon thread that waits until ``stopping()`` is true, then ``grace_s`` more, and then
    logs why and exits the process with code 1. ``resumes``: what the next start goes on from, for the
    log line."""

    def watch() -> None:
        while not stopping():
            time.sleep(0.5)
        time.sleep(grace_s)
        log.error(
            "still stopping %.0f s after the stop began (a broker that does not answer?): "
            "exiting now, as kill -9 would; nothing is lost, the next start goes on from %s",
            grace_s,
            resumes,
        )
        logging.shutdown()
        os._exit(1)

    thread = threading.Thread(target=watch, name="stop-deadline", daemon=True)
    thread.start()
    return thread
