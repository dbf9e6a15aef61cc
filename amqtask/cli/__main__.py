"""`python -m amqtask.cli ...`: the `amqtask` command (also `python -m amqtask`)."""
from . import main

main()
