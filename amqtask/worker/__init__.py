"""The consuming half: `amqtask worker`. See consumer.Worker."""
