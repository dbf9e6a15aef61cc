"""Broker settings -> connection parameters for pika, and the TLS context both clients use."""
from __future__ import annotations

import ssl

import pika

from ..settings import BrokerSettings, TLSSettings


def ssl_context(tls: TLSSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=tls.ca_certs)
    if tls.certfile:
        context.load_cert_chain(tls.certfile, tls.keyfile)
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def close_quietly(connection: pika.BlockingConnection | None) -> None:
    """Close a pika connection that may already be broken: a broken connection fails
    to close in many ways (pika errors, OSError, a closed socket), and it is gone
    either way."""
    if connection is None or not connection.is_open:
        return
    try:
        connection.close()
    except Exception:  # noqa: BLE001 - see above
        pass


def pika_parameters(broker: BrokerSettings, name: str = "amqtask") -> list[pika.ConnectionParameters]:
    """One parameter set per failover URL; pika tries them in order. `name` shows
    in RabbitMQ's connection list."""
    out = []
    for url in broker.urls:
        options = None
        if url.tls:
            options = pika.SSLOptions(ssl_context(broker.tls), broker.tls.server_hostname or url.host)
        out.append(
            pika.ConnectionParameters(
                host=url.host,
                port=url.port,
                virtual_host=url.vhost,
                credentials=pika.PlainCredentials(url.username, url.password),
                ssl_options=options,
                heartbeat=broker.heartbeat,
                socket_timeout=broker.connect_timeout,
                stack_timeout=broker.connect_timeout * 2,
                blocked_connection_timeout=broker.publish_timeout,
                connection_attempts=1,
                client_properties={"connection_name": name},
            )
        )
    return out
