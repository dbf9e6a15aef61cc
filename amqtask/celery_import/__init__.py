"""Read a Celery configuration and translate it into routing.yaml (and App options),
with a report of every setting translated, changed in meaning, or not translated.

    from amqtask.celery_import import import_celery
    translation = import_celery("proj.celeryconfig")
    print(translation.text)            # routing.yaml, commented
    print(translation.report.format())

Celery must be importable: its own settings table and router are the reference
(`pip install 'amqtask[celery]'`)."""
from .report import CHANGED, IGNORED, IMPLICIT, NOT_TRANSLATED, TRANSLATED, CeleryConfigError, Entry, Report
from .source import CeleryConfig, CeleryImportError, load_config
from .translate import Translation, import_celery, translate

__all__ = [
    "import_celery", "translate", "load_config", "Translation", "Report", "Entry", "CeleryConfig",
    "CeleryImportError", "CeleryConfigError", "TRANSLATED", "CHANGED", "NOT_TRANSLATED", "IGNORED", "IMPLICIT",
]
