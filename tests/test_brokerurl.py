import pytest

from amqtask.brokerurl import BrokerURLError, parse_broker_url, parse_broker_urls, redact_url


@pytest.mark.parametrize("url, vhost", [
    ("amqp://guest@localhost//", "/"),
    ("amqp://guest:guest@localhost:5672/%2F", "/"),
    ("amqp://localhost", "/"),
    ("amqp://localhost/", "/"),
    ("pyamqp://u:p@h:1234/prod", "prod"),
    ("librabbitmq://u:p@h/a%2Fb", "a/b"),
])
def test_vhosts(url, vhost):
    assert parse_broker_url(url).vhost == vhost


def test_fields_and_tls_default_port():
    u = parse_broker_url("amqps://user:s3cr%40t@rabbit.example:5671/v")
    assert (u.host, u.port, u.username, u.password, u.tls) == ("rabbit.example", 5671, "user", "s3cr@t", True)
    assert parse_broker_url("amqps://h").port == 5671
    assert parse_broker_url("amqp://h").port == 5672


def test_failover_list():
    urls = parse_broker_urls("amqp://a:1//; amqp://b:2//")
    assert [(u.host, u.port) for u in urls] == [("a", 1), ("b", 2)]


def test_errors_never_show_password():
    with pytest.raises(BrokerURLError) as e:
        parse_broker_url("redis://u:hunter2@h")
    assert "hunter2" not in str(e.value)
    with pytest.raises(BrokerURLError) as e:
        parse_broker_url("amqp://u:hunter2@h:notaport")
    assert "hunter2" not in str(e.value)


def test_redaction():
    u = parse_broker_url("amqp://user:hunter2@h:5672//")
    assert "hunter2" not in u.redacted() and "hunter2" not in repr(u) and "hunter2" not in str(u)
    assert redact_url("amqp://u:hunter2@a//;amqp://v:pw@b//") == "amqp://u:***@a//;amqp://v:***@b//"
