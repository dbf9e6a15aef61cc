"""Canvas encoding without a broker: signatures as Celery's dicts (compared with a
real Celery 5's), options turned into headers and the body's embed, and what the
worker gets from `prepare_signature`."""
from __future__ import annotations

import json

import pytest
from celery import Celery
from celery import chain as celery_chain
from celery import chord as celery_chord
from celery import group as celery_group

from amqtask import App
from amqtask.canvas import CanvasError, Signature, call_options, chain, chord, group, prepare_signature
from amqtask.protocol import TaskMessage, decode_task
from amqtask.results import ChordsUnsupported
from amqtask.serializers import Codec
from amqtask.topology.loader import check_text


def make_app(results: str = "") -> App:
    app = App("canvas", settings=check_text(results or "{}", environ={}).settings)

    @app.task(name="t.add")
    def add(x, y=0):
        return x + y

    return app


@pytest.fixture
def celery():
    app = Celery("ref", broker="memory://")
    yield app
    app.close()


def test_signatures_are_celerys_dicts(celery):
    app = make_app()
    add = app.tasks["t.add"]
    assert json.dumps(add.s(2, 3, y=1).set(queue="q", countdown=5).to_dict()) == json.dumps(
        celery.signature("t.add", (2, 3), {"y": 1}, queue="q", countdown=5))
    assert add.si(1).to_dict() == json.loads(json.dumps(celery.signature("t.add", (1,)).set(immutable=True)))
    ours = (add.s(1) | add.s(2)).to_dict()
    theirs = json.loads(json.dumps(celery.signature("t.add", (1,)) | celery.signature("t.add", (2,))))
    assert ours == theirs
    assert group([add.s(1), add.s(2)]).to_dict() == json.loads(json.dumps(
        celery_group([celery.signature("t.add", (1,)), celery.signature("t.add", (2,))])))
    assert chord([add.s(1)], add.s()).to_dict() == json.loads(json.dumps(
        celery_chord([celery.signature("t.add", (1,))], celery.signature("t.add"))))
    assert chain(add.s(1), add.s(2)).to_dict() == json.loads(json.dumps(
        celery_chain(celery.signature("t.add", (1,)), celery.signature("t.add", (2,)))))


def test_a_celery_signature_dict_round_trips():
    data = {"task": "t.add", "args": [1], "kwargs": {"y": 2}, "options": {"queue": "q"}, "subtask_type": None,
            "immutable": True}
    assert Signature.from_dict(data).to_dict() == data
    for bad in ({"args": []}, {"task": ""}, {"task": "t", "args": "x"}, "t.add", None):
        with pytest.raises(CanvasError):
            Signature.from_dict(bad)


def test_set_and_clone_follow_celerys_merge_rules():
    sig = Signature("t.add", (2,), {"a": 1}, {"queue": "q"})
    assert sig.set(countdown=3).options == {"queue": "q", "countdown": 3} and sig.options == {"queue": "q"}
    assert sig.clone((1,), {"b": 2}).args == (1, 2) and sig.clone((1,), {"b": 2}).kwargs == {"a": 1, "b": 2}
    frozen = sig.set(immutable=True)
    assert frozen.clone((1,)).args == (2,)


def test_options_become_headers_and_embed():
    link = Signature("t.log")
    call = call_options({"queue": "q", "countdown": 2, "group_id": "g", "group_index": 3, "link": link,
                         "link_error": [link.to_dict()], "producer": object(), "eta": "2030-01-01T00:00:00"})
    assert call.queue == "q" and call.countdown == 2 and call.headers == {"group": "g", "group_index": 3}
    assert call.embed == {"callbacks": [link.to_dict()], "errbacks": [link.to_dict()]}
    assert call.eta.year == 2030 and call.eta.tzinfo is not None


def test_link_on_apply_async_is_the_bodys_callbacks():
    app = make_app()
    publisher = app.publisher
    from amqtask.task import call_options as task_call_options

    _, wire, _ = publisher.prepare("t.add", (1, 2), call=task_call_options(
        {"link": Signature("t.log"), "link_error": Signature("t.err")}))
    body = json.loads(wire.body)
    assert body[2]["callbacks"] == [Signature("t.log").to_dict()]
    assert body[2]["errbacks"] == [Signature("t.err").to_dict()]
    with pytest.raises(TypeError):
        task_call_options({"link": Signature("t.log"), "lnik_error": 1})


def test_prepare_signature_gives_the_worker_a_message_with_the_result_prepended():
    app = make_app()
    parent = TaskMessage(task="t.add", id="parent-1", root_id="root-1")
    sig = Signature("t.add", (10,), {}, {"task_id": "next-1", "reply_to": "amqtask.reply.x"}).to_dict()
    destination, wire, task_id = prepare_signature(app.publisher, sig, result=5, prepend=True, parent=parent)
    message = decode_task(wire, Codec())
    assert task_id == "next-1" and message.args == (5, 10) and message.parent_id == "parent-1"
    assert message.root_id == "root-1" and wire.reply_to == "amqtask.reply.x"
    _, wire, _ = prepare_signature(app.publisher, Signature("t.add", (1,), immutable=True).to_dict(), result=5,
                                   prepend=True)
    assert decode_task(wire, Codec()).args == (1,)


def test_prepare_signature_sends_a_celery_chain_as_its_first_task_carrying_the_rest():
    app = make_app()
    data = chain(Signature("t.a", (1,)), Signature("t.b"), Signature("t.c")).to_dict()
    _, wire, _ = prepare_signature(app.publisher, data, result=7, prepend=True)
    message = decode_task(wire, Codec())
    assert message.task == "t.a" and message.args == (7, 1)
    assert [s["task"] for s in message.embed["chain"]] == ["t.c", "t.b"]
    with pytest.raises(CanvasError):
        prepare_signature(app.publisher, group([Signature("t.a")]).to_dict())


def test_a_chord_without_a_counting_backend_is_refused_at_call_time():
    add = make_app().tasks["t.add"]
    with pytest.raises(ChordsUnsupported, match="chords need a result backend"):
        chord([add.s(1), add.s(2)])(add.s())
    add = make_app("results: {backend: 'rpc://'}").tasks["t.add"]
    with pytest.raises(ChordsUnsupported, match="chords need a result backend"):
        (group([add.s(1)]) | add.s()).apply_async()


def test_canvas_shapes_that_cannot_be_sent_are_refused():
    add = make_app().tasks["t.add"]
    with pytest.raises(CanvasError):
        chain(add.s(1), group([add.s(2)]), add.s(3)).apply_async()
    with pytest.raises(CanvasError):
        group([]).apply_async()
    with pytest.raises(CanvasError):
        Signature("t.add").delay()  # no app
