"""A worker's control node, without the wire: given a decoded control message and
its headers, decide whether it is meant for this node, run the command, and say
what to publish back (kombu's `Node.handle_message` and `Node.dispatch`).

The monitor link (amqtask.amqp.monitor) feeds it each message of the node's
`<nodename>.celery.pidbox` queue and publishes the `Reply` it returns.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

from ..events.build import bounded_repr
from .commands import ALIASES, COMMANDS, CONTROL, Answer, Command, Context, handler_for
from .matching import addressed_to
from .view import ControlRefused

log = logging.getLogger("amqtask.control")

NAMESPACE = "celery"
EXCHANGE = f"{NAMESPACE}.pidbox"  # fanout, durable=False: where every control request is published
REPLY_EXCHANGE = f"reply.{NAMESPACE}.pidbox"  # direct, durable=False: replies, keyed by the client's id
# kombu's Mailbox defaults as Celery configures them (control_queue_ttl, control_queue_expires).
QUEUE_ARGUMENTS = {"x-message-ttl": 300_000, "x-expires": 10_000}
_ARGUMENTS_SHOWN = 200


def queue_name(hostname: str) -> str:
    """The node's own queue: '<nodename>.celery.pidbox'."""
    return f"{hostname}.{NAMESPACE}.pidbox"


@dataclass(frozen=True)
class Reply:
    """What to publish: `body` ({nodename: result}) to `exchange` with `routing_key`,
    headers {"ticket", "clock"}."""

    exchange: str
    routing_key: str
    body: dict[str, Any]
    headers: dict[str, Any]


class ControlNode:
    """Runs the commands addressed to one node, under its `worker.control` mode."""

    def __init__(self, context: Context, *, mode: str = "all") -> None:
        self.context = context
        self.mode = mode

    @property
    def hostname(self) -> str:
        return self.context.hostname

    def handle(self, body: Any, headers: Mapping[str, Any] | None = None) -> Reply | None:
        """Act on one control message; the reply to publish, or None (not for us,
        no reply wanted, or garbage)."""
        headers = headers if isinstance(headers, Mapping) else {}
        self.context.clock.adjust(headers.get("clock") or 0)
        if not isinstance(body, Mapping) or not isinstance(body.get("method"), str):
            log.debug("ignoring a control message that is not a command")
            return None
        if not addressed_to(self.hostname, body.get("destination"), body.get("pattern"), body.get("matcher")):
            return None
        method = body["method"]
        arguments = body.get("arguments") if isinstance(body.get("arguments"), Mapping) else {}
        reply_to = _reply_address(body.get("reply_to"))
        result = self.dispatch(method, arguments, sender=reply_to)
        if reply_to is None:
            return None
        exchange, routing_key = reply_to
        return Reply(exchange, routing_key, {self.hostname: result},
                     {"ticket": body.get("ticket"), "clock": self.context.clock.forward()})

    def dispatch(self, method: str, arguments: Mapping[str, Any], *, sender: tuple[str, str] | None = None) -> Any:
        """Run `method` with `arguments`; its result, or {"error": reason}."""
        command = COMMANDS.get(ALIASES.get(method, method))
        if command is None:
            log.warning("unknown control command %r from %s", method[:100], _sender(sender))
            return {"error": f"No such control command: {method[:100]}"}
        handler = handler_for(command, self.mode)
        if handler is None:
            log.warning("refused control command %s(%s) from %s: worker.control is %s", command.name,
                        _shown(arguments), _sender(sender), self.mode)
            return {"error": f"refused: worker.control is {self.mode} on {self.hostname}"}
        try:
            result = handler(self.context, arguments)
        except ControlRefused as exc:
            result = {"error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a failing command answers with its error, as kombu's does
            log.exception("control command %s failed", command.name)
            result = {"error": repr(exc)}
        self._audit(command, arguments, sender, result)
        return result.reply if isinstance(result, Answer) else result

    def _audit(self, command: Command, arguments: Mapping[str, Any], sender: tuple[str, str] | None,
               result: Any) -> None:
        """Every state-changing command is logged with who asked (its reply address)
        and how it went; the periodic enable_events of Flower only when it changed something."""
        if command.kind != CONTROL:
            return
        level, outcome = _audit_entry(command, result)
        log.log(level, "control command %s(%s) from %s: %s", command.name, _shown(arguments), _sender(sender),
                outcome)


def _audit_entry(command: Command, result: Any) -> tuple[int, Any]:
    """(log level, outcome) for a command's audit line: a refusal is a warning, what
    changed nothing is debug (Flower sends enable_events every 5 s), a change is info."""
    if isinstance(result, Answer):
        return (logging.INFO, result.note) if result.note else (logging.DEBUG, "nothing changed")
    outcome = result.get("ok", result.get("error")) if isinstance(result, dict) else result
    if isinstance(result, dict) and "error" in result:
        return logging.WARNING, outcome
    if command.name == "heartbeat" or "already" in str(outcome):
        return logging.DEBUG, outcome
    return logging.INFO, outcome


def _reply_address(value: Any) -> tuple[str, str] | None:
    """Where to reply. Only the reply exchange is accepted: a request naming another
    exchange would make the node publish into someone else's routing."""
    if isinstance(value, Mapping) and value.get("exchange") == REPLY_EXCHANGE \
            and isinstance(value.get("routing_key"), str) and 0 < len(value["routing_key"]) <= 255:
        return REPLY_EXCHANGE, value["routing_key"]
    return None


def _sender(sender: tuple[str, str] | None) -> str:
    if sender is None:
        return "a sender without a reply address"
    return f"reply address {sender[0]}/{sender[1]}"


def _shown(arguments: Mapping[str, Any]) -> str:
    text = ", ".join(f"{str(k)[:40]}={bounded_repr(v, 80)}" for k, v in list(arguments.items())[:20])
    return text if len(text) <= _ARGUMENTS_SHOWN else text[:_ARGUMENTS_SHOWN] + "..."
