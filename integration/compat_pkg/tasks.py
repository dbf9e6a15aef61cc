from amqtask import shared_task


@shared_task(name="c.shared", bind=True)
def shared_echo(self, value):
    return {"value": value, "app": self.app.name}
