"""Every conformance vector published raw to a real worker: valid ones run (their
result arrives on reply_to), invalid ones are dead-lettered with the stated reason."""
from __future__ import annotations

import json

import pika

from tests.vectors.loader import body_bytes, decode_vectors

from .conftest import drain


def test_vectors_against_a_running_worker(harness, amqp):
    harness.start("-P", "threads", "-c", "2")
    reply = f"{harness.prefix}.replies"
    amqp.queue_declare(reply)
    amqp.track("queue", reply)
    vectors = decode_vectors()
    for vector in vectors:
        message = vector["message"]
        props = dict(message["properties"])
        if props.get("reply_to") == "REPLY_TO":
            props["reply_to"] = reply
        amqp.basic_publish("", harness.queue, body_bytes(message),
                           pika.BasicProperties(headers=message["headers"], **props))
    runs = [v for v in vectors if v["expect"]["outcome"] in ("run", "revoked")]
    dead = [v for v in vectors if v["expect"]["outcome"] == "dead-letter"]
    harness.wait_for(lambda: amqp.queue_declare(reply, passive=True).method.message_count == len(runs),
                     what=f"{len(runs)} results")
    results = {}
    for _, props, body in drain(amqp, reply):
        payload = json.loads(body)
        results[payload["task_id"]] = payload
    for vector in runs:
        task_id = vector["message"]["headers"].get("id") or vector["message"]["properties"]["correlation_id"]
        payload = results[task_id]
        if vector["expect"]["outcome"] == "revoked":
            assert payload["status"] == "REVOKED", vector["name"]
        else:
            assert (payload["status"], payload["result"]) == ("SUCCESS", vector["expect"]["result"]), vector["name"]
    dead_queue = f"{harness.queue}.dead"
    harness.wait_for(lambda: amqp.queue_declare(dead_queue, passive=True).method.message_count == len(dead),
                     what=f"{len(dead)} dead letters")
    reasons = {p.headers.get("id") or p.correlation_id: p.headers["x-amqtask-reason"]
               for _, p, _ in drain(amqp, dead_queue)}
    for vector in dead:
        assert vector["expect"]["reason"] in reasons[vector["message"]["headers"]["id"]], vector["name"]
