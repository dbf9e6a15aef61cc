"""wedo/__init__.py: the app reads wedo.config."""
from celery import Celery

app = Celery('wedo', set_as_current=False)
app.config_from_object('tests.celery_configs.seed_002_wedo.config')
