"""Celery's event protocol for amqtask workers: building events, a non-blocking
dispatcher, and the heartbeat schedule. The wire side is amqtask.amqp.monitor."""
from .build import (
    TASK_FAILED,
    TASK_RECEIVED,
    TASK_REJECTED,
    TASK_RETRIED,
    TASK_REVOKED,
    TASK_STARTED,
    TASK_SUCCEEDED,
    WORKER_HEARTBEAT,
    WORKER_OFFLINE,
    WORKER_ONLINE,
    EventFactory,
    SoftwareInfo,
    routing_key,
    utcoffset,
)
from .clock import LamportClock
from .dispatcher import EventDispatcher
from .heartbeat import HeartbeatSchedule

EVENT_EXCHANGE = "celeryev"

__all__ = [
    "EVENT_EXCHANGE", "EventDispatcher", "EventFactory", "HeartbeatSchedule", "LamportClock", "SoftwareInfo",
    "routing_key", "utcoffset", "TASK_FAILED", "TASK_RECEIVED", "TASK_REJECTED", "TASK_RETRIED", "TASK_REVOKED",
    "TASK_STARTED", "TASK_SUCCEEDED", "WORKER_HEARTBEAT", "WORKER_OFFLINE", "WORKER_ONLINE",
]
