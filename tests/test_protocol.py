"""Celery protocol v2 encoding and decoding, including what must be refused."""
import datetime as dt
import json
import pickle

import pytest

from hypothesis import given
from hypothesis import strategies as st

from amqtask.errors import ContentDisallowed, ProtocolError, SerializationError
from amqtask.protocol import TaskMessage, WireMessage, decode_task, encode_task
from amqtask.serializers import Codec

CELERY_V2_HEADERS = {"lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries",
                     "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result"}


def test_encoding_matches_celery_v2_shape():
    eta = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    msg = TaskMessage(task="projq.tasks.add", id="abc", args=(2, 3), kwargs={"z": 1}, eta=eta,
                      time_limit=30, soft_time_limit=25, priority=5)
    wire = encode_task(msg, Codec())
    assert set(wire.headers) == CELERY_V2_HEADERS
    assert wire.headers["task"] == "projq.tasks.add" and wire.headers["id"] == "abc"
    assert wire.headers["root_id"] == "abc" and wire.headers["parent_id"] is None
    assert wire.headers["timelimit"] == [30, 25]  # [hard, soft], as Celery's source sends it
    assert wire.headers["eta"] == "2030-01-02T03:04:05+00:00"
    assert wire.headers["argsrepr"] == "(2, 3)" and wire.headers["kwargsrepr"] == "{'z': 1}"
    assert (wire.content_type, wire.content_encoding) == ("application/json", "utf-8")
    assert (wire.correlation_id, wire.delivery_mode, wire.priority) == ("abc", 2, 5)
    assert json.loads(wire.body) == [[2, 3], {"z": 1},
                                     {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]


@pytest.mark.parametrize("serializer", ["json", "msgpack", "yaml"])
@pytest.mark.parametrize("compression", [None, "zlib", "bzip2"])
def test_round_trip(serializer, compression):
    codec = Codec()
    msg = TaskMessage(task="t", args=(1, "two", [3]), kwargs={"k": {"n": None}}, retries=2,
                      expires=dt.datetime(2031, 5, 6, tzinfo=dt.timezone.utc), group="g", group_index=1)
    wire = encode_task(msg, codec, serializer=serializer, compression=compression)
    if compression:
        assert wire.headers["compression"] in ("application/x-gzip", "application/x-bz2")
    back = decode_task(wire, codec)
    assert (back.task, back.id, back.args, back.kwargs) == (msg.task, msg.id, msg.args, msg.kwargs)
    assert (back.retries, back.expires, back.group, back.group_index) == (2, msg.expires, "g", 1)


def test_pickle_is_refused_unless_accepted():
    with pytest.raises(ContentDisallowed):
        Codec().encode([[], {}, {}], "pickle")
    wire = WireMessage(body=pickle.dumps([[], {}, {}]), headers={"task": "t", "id": "1"},
                       content_type="application/x-python-serialize", content_encoding="binary")
    with pytest.raises(ContentDisallowed):
        decode_task(wire, Codec())
    assert decode_task(wire, Codec(["pickle"])).task == "t"


def wire(body=b'[[], {}, {}]', headers=None, content_type="application/json", encoding="utf-8"):
    return WireMessage(body=body, headers={"task": "t", "id": "1"} if headers is None else headers,
                       content_type=content_type, content_encoding=encoding)


@pytest.mark.parametrize("message, error, fragment", [
    (wire(headers={}), ProtocolError, "'task' header"),
    (wire(headers={"task": 5, "id": "1"}), ProtocolError, "'task' header"),
    (wire(body=b"[[], {}"), SerializationError, "cannot decode json"),
    (wire(body=b'{"a": 1}'), ProtocolError, "[args, kwargs, embed]"),
    (wire(body=b'[1, {}, {}]'), ProtocolError, "args"),
    (wire(body=b'[[], [], {}]'), ProtocolError, "kwargs"),
    (wire(content_type="text/plain"), ContentDisallowed, "unknown content type"),
    (wire(headers={"task": "t", "id": "1", "eta": "tomorrow"}), ProtocolError, "ISO 8601"),
    (wire(headers={"task": "t", "id": "1", "retries": "2"}), ProtocolError, "'retries'"),
    (wire(headers={"task": "t", "id": "1", "timelimit": [1]}), ProtocolError, "timelimit"),
    (wire(headers={"task": "t", "id": "1", "compression": "application/x-gzip"}), SerializationError, "decompress"),
    (wire(body=b"\xff\xfe"), SerializationError, "cannot decode"),
    # Found by the chaos suite: a string where a list of signatures belongs was iterated per character.
    (wire(body=rb'[[], {}, {"callbacks": "\u00b2\u00b2"}]'), ProtocolError, "'callbacks' must be a list"),
    (wire(body=b'[[], {}, {"chain": 16}]'), ProtocolError, "'chain' must be a list"),
    (wire(body=b'[[], {}, {"chord": [1]}]'), ProtocolError, "'chord' must be a signature"),
])
def test_malformed_messages_are_refused_with_a_reason(message, error, fragment):
    with pytest.raises(error) as exc:
        decode_task(message, Codec())
    assert fragment in str(exc.value)


def test_minimal_foreign_message_is_accepted():
    """What a non-Python client must send at least: task and id headers, a JSON body."""
    back = decode_task(wire(body=b'[[2, 3], {}]', headers={"task": "projq.tasks.add", "id": "x"}), Codec())
    assert back.args == (2, 3) and back.eta is None and back.time_limit is None


def test_naive_times_are_utc():
    back = decode_task(wire(headers={"task": "t", "id": "1", "eta": "2020-01-01T00:00:00"}), Codec())
    assert back.eta == dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)


def test_fractional_time_limits_survive_pika_encoding():
    import decimal

    from amqtask.amqp.blocking import wire_properties
    from amqtask.protocol import WireMessage as W

    wire = encode_task(TaskMessage(task="t", time_limit=30.0, soft_time_limit=0.5), Codec())
    props = wire_properties(wire)
    assert props.headers["timelimit"] == [30, decimal.Decimal("0.5")]
    back = decode_task(W(body=wire.body, headers=props.headers, content_type=wire.content_type,
                         content_encoding=wire.content_encoding), Codec())
    assert (back.time_limit, back.soft_time_limit) == (30.0, 0.5)


_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                     st.text(max_size=300), st.sampled_from(["\n" * 200, "é" * 255, "'\"" * 100]))


@given(args=st.lists(_scalars | st.lists(st.integers(), max_size=40), max_size=40).map(tuple),
       kwargs=st.dictionaries(st.text(max_size=10), _scalars, max_size=40))
def test_argsrepr_is_exactly_what_reprlib_gives(args, kwargs):
    """argsrepr/kwargsrepr take a fast path for common arguments; it must not change a byte."""
    from amqtask.protocol import _repr, _short_repr

    assert _short_repr(args) == _repr.repr(args)
    assert _short_repr(kwargs) == _repr.repr(kwargs)


@given(headers=st.dictionaries(st.text(max_size=8), st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20), st.binary(max_size=8), st.lists(st.one_of(st.none(), st.floats(allow_nan=False), st.integers())),
    st.dictionaries(st.text(max_size=4), st.floats(allow_nan=False), max_size=3)), max_size=20))
def test_pika_headers_fast_path_agrees_with_the_full_conversion(headers):
    from amqtask.amqp.blocking import pika_header_value, pika_headers

    assert pika_headers(headers) == pika_header_value(headers)


def test_nesting_limit_is_exact_whatever_the_shortcut():
    """100 levels decode; 101 are refused (JSON and msgpack), however the body is spelled."""
    import msgpack
    import pytest

    from amqtask.errors import SerializationError
    from amqtask.serializers import MAX_DEPTH

    codec = Codec()
    ok, deep = "[" * MAX_DEPTH + "]" * MAX_DEPTH, "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)
    assert codec.decode(ok.encode(), "application/json") is not None
    with pytest.raises(SerializationError, match="nested"):
        codec.decode(deep.encode(), "application/json")
    spaced = " [ " * (MAX_DEPTH + 1) + " ] " * (MAX_DEPTH + 1)
    with pytest.raises(SerializationError, match="nested"):
        codec.decode(spaced.encode(), "application/json")
    value: list = []
    for _ in range(MAX_DEPTH):
        value = [value]
    with pytest.raises(SerializationError, match="nested"):
        codec.decode(msgpack.packb(value), "application/x-msgpack")


def test_json_speaks_kombus_type_markers_both_ways():
    """kombu (5.3 and later) writes datetime, date, time, UUID, Decimal and bytes as
    {"__type__": ..., "__value__": ...}: a Celery client's datetime argument reaches an
    amqtask task as a datetime, and an amqtask client's reaches a Celery task as one."""
    import uuid
    from decimal import Decimal

    from kombu.utils import json as kombu_json

    when = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.timezone.utc)
    values = [when, when.replace(tzinfo=None), when.date(), when.time(), uuid.UUID(int=7), Decimal("9.99"),
              b"text", b"\xff\x00"]
    body = [values, {"at": when}, {}]
    from_celery = kombu_json.dumps(body).encode()
    assert Codec().decode(from_celery, "application/json", "utf-8") == body
    ours, content_type, encoding, _ = Codec().encode(body)
    assert kombu_json.loads(ours) == body
    # A dict that only looks like a marker of an unknown type stays a dict.
    assert Codec().decode(b'{"__type__": "mine", "__value__": 1}', "application/json") == {
        "__type__": "mine", "__value__": 1}


@pytest.mark.parametrize("body", [b'[[1], {}]', b'  [[1], {}]\n', b'[[1], {}]  \r\n', "[[\"é\"], {}]".encode()])
def test_json_bodies_decode_as_json_loads_reads_them(body):
    from amqtask.serializers import Codec

    assert Codec().decode(body, "application/json", "utf-8") == json.loads(body)


@pytest.mark.parametrize("body", [b'[[1], {}] x', b'[[1], {}][]', b'', b'  ', b'[1,'])
def test_json_bodies_json_loads_refuses_are_refused(body):
    from amqtask.serializers import Codec, SerializationError

    with pytest.raises(json.JSONDecodeError):
        json.loads(body)
    with pytest.raises(SerializationError):
        Codec().decode(body, "application/json", "utf-8")
