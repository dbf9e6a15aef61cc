"""The conformance vectors, both ways: what amqtask sends validates against the
shipped schema and matches the encode vectors; the decoder accepts every valid
decode vector and refuses every invalid one with the stated reason."""
import datetime as dt

import jsonschema
import pytest

from amqtask.errors import AmqtaskError
from amqtask.protocol import TaskMessage, decode_task, encode_task, load_schema
from amqtask.results import FAILURE, SUCCESS, exception_payload, result_body
from amqtask.serializers import Codec

from .vectors.loader import decode_vectors, encode_vectors, wire_message

TASK_SCHEMA = load_schema("task-message")
RESULT_SCHEMA = load_schema("result-message")


def as_document(wire) -> dict:
    import json

    props = {"content_type": wire.content_type, "content_encoding": wire.content_encoding,
             "correlation_id": wire.correlation_id, "delivery_mode": wire.delivery_mode}
    if wire.priority is not None:
        props["priority"] = wire.priority
    return {"properties": props, "headers": dict(wire.headers), "body": json.loads(wire.body)}


@pytest.mark.parametrize("vector", decode_vectors(), ids=lambda v: v["name"])
def test_decode_vector(vector):
    expect = vector["expect"]
    wire = wire_message(vector, reply_to="replies")
    if expect["decode"] == "error":
        with pytest.raises(AmqtaskError) as exc:
            decode_task(wire, Codec())
        assert expect["reason"] in str(exc.value)
        return
    task = decode_task(wire, Codec())
    if "args" in expect:
        assert list(task.args) == expect["args"] and dict(task.kwargs) == expect["kwargs"]
    if "id" in expect:
        assert task.id == expect["id"]
    if "eta" in expect:
        assert task.eta.isoformat() == expect["eta"]
    if "timelimit" in expect:
        assert [task.time_limit, task.soft_time_limit] == expect["timelimit"]


@pytest.mark.parametrize("vector", [v for v in decode_vectors() if "body" in v["message"]], ids=lambda v: v["name"])
def test_schema_agrees_with_the_vector(vector):
    validator = jsonschema.Draft202012Validator(TASK_SCHEMA)
    assert validator.is_valid(vector["message"]) == vector["schema_valid"], list(validator.iter_errors(vector["message"]))


@pytest.mark.parametrize("vector", encode_vectors(), ids=lambda v: v["name"])
def test_encode_vector(vector):
    inp = dict(vector["input"])
    for key in ("eta", "expires"):
        if key in inp:
            inp[key] = dt.datetime.fromisoformat(inp[key])
    inp["args"] = tuple(inp["args"])
    wire = encode_task(TaskMessage(**inp), Codec())
    document = as_document(wire)
    jsonschema.validate(document, TASK_SCHEMA)
    expect = vector["expect"]
    for key, value in expect.get("properties", {}).items():
        assert document["properties"][key] == value, key
    for key, value in expect["headers"].items():
        assert document["headers"][key] == value, key
    assert document["body"] == expect["body"]


def test_result_messages_validate():
    codec = Codec()
    for state, value in ((SUCCESS, 5), (FAILURE, exception_payload(ValueError("x")))):
        import json

        body, _, _, _ = codec.encode(result_body("id-1", state, value, "tb" if state == FAILURE else None))
        jsonschema.validate(json.loads(body), RESULT_SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"task_id": "x", "status": "FAILURE", "result": 5}, RESULT_SCHEMA)
