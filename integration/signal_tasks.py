"""Receivers for the worker signals, imported by a worker with `-I integration.signal_tasks`:
each signal is appended to $WORKER_TEST_RECORD (with the process id) by worker_app.record."""
from amqtask import signals

from .worker_app import record


@signals.worker_process_init.connect
def process_init(**kwargs):
    record(event="worker_process_init")


@signals.worker_ready.connect
def ready(sender=None, **kwargs):
    record(event="worker_ready", hostname=sender.config.hostname)


@signals.worker_shutdown.connect
def shutdown(sender=None, **kwargs):
    record(event="worker_shutdown", hostname=sender.config.hostname)
