"""amqtask: a RabbitMQ-first task queue speaking Celery's protocol v2."""
from .app import App
from .errors import (
    AmqtaskError,
    BrokerError,
    BrokerUnavailable,
    ConfigError,
    NackError,
    PublishError,
    RoutingError,
    UnroutableError,
)
from .results import AsyncResult
from .schedules import crontab
from .shared import current_app, shared_task
from .task import Task

__all__ = [
    "App", "Task", "AsyncResult", "AmqtaskError", "BrokerError", "BrokerUnavailable", "ConfigError",
    "shared_task", "current_app", "NackError", "PublishError", "RoutingError", "UnroutableError", "crontab",
]
__version__ = "0.1.0"
