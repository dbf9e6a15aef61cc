"""A router named by string in task_routes ('module.function'), as Celery allows."""


def route_by_prefix(name, args, kwargs, options, task=None, **kw):
    if name.startswith('legacy.'):
        return 'default'
    return None
