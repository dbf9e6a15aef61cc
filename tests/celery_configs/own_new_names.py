"""New names with kombu objects of every exchange type, a router list mixing a map, a
list of (pattern, route) pairs with a regex, a router function and a router named by
string; annotations with rate limits; crontab, timedelta and number schedules."""
import re
from datetime import timedelta

from celery.schedules import crontab, schedule
from kombu import Exchange, Queue, binding

media = Exchange('media', type='direct')
events = Exchange('events', type='topic')
fanout = Exchange('broadcast', type='fanout')
by_header = Exchange('by_header', type='headers')

broker_url = 'amqp://app:s3cret@rabbit.internal:5672/prod'
broker_heartbeat = 30
broker_connection_timeout = 8
broker_transport_options = {'confirm_publish': True, 'max_retries': 5}
result_backend = 'rpc://'
result_expires = timedelta(hours=6)
task_serializer = 'json'
accept_content = ['application/json', 'msgpack']
task_default_queue = 'default'
task_default_exchange = 'tasks'
task_default_exchange_type = 'direct'
task_default_routing_key = 'default'
task_queues = (
    Queue('default', Exchange('tasks', 'direct'), routing_key='default'),
    Queue('video', media, routing_key='video', queue_arguments={'x-max-priority': 10}),
    Queue('images', media, routing_key='images', message_ttl=60, max_length=1000),
    Queue('events.all', events, routing_key='event.#'),
    Queue('events.billing', events, routing_key='event.billing.*'),
    Queue('audit', fanout),
    Queue('pdf', by_header, binding_arguments={'x-match': 'all', 'format': 'pdf'}),
    Queue('mixed', [binding(events, routing_key='mixed.#'), binding(media, routing_key='mixed')]),
)


def route_for_reports(name, args, kwargs, options, task=None, **kw):
    if name.startswith('reports.'):
        return {'queue': 'default', 'priority': 3}
    return None


task_routes = (
    {'media.encode': {'queue': 'video'}, 'media.thumbnail': 'images',
     'events.billing.invoice': {'exchange': 'events', 'routing_key': 'event.billing.invoice'},
     'notify.*': {'queue': 'audit'}},
    [(re.compile(r'(ingest|etl)\.'), {'queue': 'events.all', 'routing_key': 'event.ingest'}),
     ('mixed.*', {'queue': 'mixed'})],
    route_for_reports,
    'tests.celery_configs.own_routers.route_by_prefix',
)
task_annotations = [
    {'media.encode': {'rate_limit': '10/m', 'time_limit': 600}, 'notify.email': {'max_retries': None}},
    {'*': {'acks_late': True}},
]
task_default_rate_limit = '100/s'
worker_concurrency = 8
worker_prefetch_multiplier = 2
worker_pool = 'threads'
beat_schedule = {
    'every-10s': {'task': 'media.thumbnail', 'schedule': 10.0, 'args': (1,)},
    'every-5m': {'task': 'reports.daily', 'schedule': timedelta(minutes=5), 'kwargs': {'full': True},
                 'options': {'queue': 'default', 'link': None}},
    'weekday-mornings': {'task': 'reports.daily', 'schedule': crontab(minute=0, hour='7,8', day_of_week='mon-fri')},
    'first-monday': {'task': 'reports.monthly', 'schedule': crontab(minute=0, hour=6, day_of_month='1-7',
                                                                     day_of_week='mon')},
    'hourly': {'task': 'reports.daily', 'schedule': schedule(run_every=timedelta(hours=1))},
    'by-name': {'task': 'reports.daily', 'schedule': 'whenever'},
}
timezone = 'Europe/Oslo'

_TASK_NAMES = ["media.encode", "media.thumbnail", "events.billing.invoice", "notify.email", "ingest.csv",
               "etl.load", "mixed.a", "reports.daily", "reports.monthly", "legacy.cleanup", "other.thing"]
