"""`amqtask status` rows from passive-declare results, without a broker."""
from amqtask.status import Depth, collect, table_rows
from amqtask.topology.loader import load_settings


def test_every_queue_in_order_with_missing_ones_and_dead_letter_depths(example_config):
    topology = load_settings(example_config, environ={}).topology
    known = {"default": Depth(4, 2), "default.dead": Depth(1, 0), "invoices": Depth(0, 1),
             "invoices_dead": Depth(7, 0), "web_tasks.dead": Depth(0, 0)}
    asked: list[str] = []

    def inspect(name):
        asked.append(name)
        return known.get(name)

    rows = {row.name: row for row in collect(topology, inspect)}
    assert list(rows) == list(topology.queues)
    assert len(asked) == len(set(asked))  # a shared dead-letter queue is inspected once
    assert (rows["default"].depth, rows["default"].dead) == (Depth(4, 2), 1)
    assert rows["invoices"].dead_queues == ("invoices_dead",) and rows["invoices"].dead == 7
    assert rows["web_tasks"].missing and rows["web_tasks"].dead == 0
    assert rows["audit"].dead is None  # no dead-letter queue yet
    assert rows["event_stream"].dead_queues == ()  # streams keep every message
    table = {r[0]: r[1:] for r in table_rows(list(rows.values()))}
    assert table["QUEUE"] == ("READY", "CONSUMERS", "DEAD", "DEAD-LETTER QUEUE")
    assert table["default"] == ("4", "2", "1", "default.dead")
    assert table["web_tasks"] == ("missing", "-", "0", "web_tasks.dead")
    assert table["event_stream"] == ("missing", "-", "-", "-")
