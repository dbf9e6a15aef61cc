"""Celery configurations as real Python modules, for `amqtask import-celery` tests.

seed_*: the configurations of five real Celery setups (team notes), as written there,
typos and all. own_*: more shapes: old and new names, kombu objects, router
functions, crontab, annotations, namespaced (Django) settings.
Each module lists the task names its project uses in `_TASK_NAMES` (the leading
underscore keeps it out of the settings, as Celery does)."""
