"""Read the conformance vectors: decode/*.json (a message in, an outcome out) and
encode/*.json (a call in, the message amqtask must send)."""
from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from amqtask.protocol import WireMessage

HERE = Path(__file__).resolve().parent


def decode_vectors() -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((HERE / "decode").glob("*.json"))]


def encode_vectors() -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((HERE / "encode").glob("*.json"))]


def body_bytes(message: dict[str, Any]) -> bytes:
    if "body_base64" in message:
        return base64.b64decode(message["body_base64"])
    if "body_text" in message:
        return message["body_text"].encode("utf-8")
    return json.dumps(message["body"]).encode("utf-8")


def wire_message(vector: dict[str, Any], reply_to: str | None = None) -> WireMessage:
    message = vector["message"]
    props = message["properties"]
    return WireMessage(
        body=body_bytes(message), headers=message["headers"], content_type=props.get("content_type", ""),
        content_encoding=props.get("content_encoding", ""), correlation_id=props.get("correlation_id"),
        reply_to=reply_to if props.get("reply_to") == "REPLY_TO" else props.get("reply_to"),
        priority=props.get("priority"),
    )
