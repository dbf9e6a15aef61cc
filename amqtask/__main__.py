"""`python -m amqtask ...`: the `amqtask` command, as `python -m celery` is Celery's."""
from .cli import main

main()
