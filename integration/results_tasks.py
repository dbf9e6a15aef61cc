"""Tasks for the result backend tests, loaded by a worker with `-I integration.results_tasks`
(on top of integration.worker_app's, whose App and config they share)."""
import os
import time

from integration.worker_app import app, record


@app.task(name="t.started", bind=True, track_started=True)
def started(self, gate):
    """Reports STARTED, then runs until the file `gate` exists (at most a minute)."""
    record(event="start", id=self.request.id)
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    return "done"
