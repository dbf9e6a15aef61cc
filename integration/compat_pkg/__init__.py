"""A package whose tasks module the compat app finds with autodiscover_tasks."""
