"""Shared pieces of the `amqtask` command: options, error handling, config
loading, tables. Exit status: 0 success, 1 runtime error (broker, publish), 2 usage
or configuration error."""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import sys
from typing import Any, Callable, Sequence

import click
from click.core import ParameterSource

from ..errors import AmqtaskError, BrokerError, ConfigError, RoutingError, ScheduleError, SerializationError
from ..settings import Settings
from ..topology.loader import CONFIG_ENV, check_file, format_problems

EXIT_RUNTIME = 1
EXIT_USAGE = 2


@dataclasses.dataclass(frozen=True)
class GlobalOptions:
    """Celery's global options, given before the subcommand (`amqtask -A proj worker`,
    as `celery -A proj worker`). Each subcommand that takes the option uses it unless
    given its own after the subcommand name; `load` applies broker and result backend
    to every command that reads routing.yaml."""

    app: str | None = None
    broker: str | None = None
    result_backend: str | None = None
    config: str | None = None
    workdir: str | None = None  # absolute: the process has changed to it already
    quiet: bool = False
    notes: tuple[str, ...] = ()  # options accepted with nothing to do, for the log


def global_options() -> GlobalOptions:
    """The options given before the subcommand (defaults outside a command line)."""
    ctx = click.get_current_context(silent=True)
    found = ctx.find_root().obj if ctx is not None else None
    return found if isinstance(found, GlobalOptions) else GlobalOptions()


def unused_global_notes(*, no_color: bool, loader: str | None, skip_checks: bool, quiet: bool) -> tuple[str, ...]:
    """One line for each Celery global option given that has nothing to do here."""
    notes = []
    if no_color:
        notes.append("-C/--no-color: amqtask prints no colour; nothing to turn off")
    if loader:
        notes.append(f"--loader {loader}: amqtask has no loaders (the App comes from -A); ignored")
    if skip_checks:
        notes.append("--skip-checks: amqtask runs no Django checks; nothing to skip")
    if quiet:
        notes.append("-q/--quiet: only worker and beat have a banner to leave out; ignored")
    return tuple(notes)


def _on_command_line(ctx: click.Context, param: click.Parameter) -> bool:
    return ctx.get_parameter_source(param.name or "") is ParameterSource.COMMANDLINE


def _or_global(field: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """An option callback: the subcommand's own value when given on the command line,
    else the global option's, else its environment variable or default."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if _on_command_line(ctx, param):
            return value
        return getattr(global_options(), field) or value

    return callback


# A Celery configuration module (`--config proj.celeryconfig`, Celery's meaning) rather
# than a routing.yaml path: a dotted Python name or a .py file.
_PYTHON_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def refuse_celery_config_module(value: str | None) -> None:
    """Exit 2 with the way forward when --config names a Celery configuration module:
    amqtask reads routing.yaml, which `amqtask import-celery` writes from it."""
    if value is None or os.path.exists(value) or value.endswith((".yaml", ".yml")):
        return
    if value.endswith(".py") or _PYTHON_MODULE.fullmatch(value):
        fail(f"--config {value!r} looks like a Celery configuration module; amqtask's --config names a "
             f"routing.yaml. Translate it once with `amqtask import-celery {value} -o routing.yaml` and pass "
             f"--config routing.yaml, or call app.config_from_object({value!r}) in the App's module", EXIT_USAGE)


def _config_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    chosen = _or_global("config")(ctx, param, value)
    refuse_celery_config_module(chosen)
    return chosen  # type: ignore[no-any-return]


config_option = click.option(
    "--config", "config_path", metavar="PATH", envvar=CONFIG_ENV, default=None, callback=_config_callback,
    help=f"routing.yaml to use [default: ./routing.yaml, or ${CONFIG_ENV}]",
)
broker_option = click.option(
    "-b", "--broker", "broker_url", metavar="URL", default=None, callback=_or_global("broker"),
    help="Broker URL (amqp://, amqps://; several joined by ';' for failover), over routing.yaml's broker.url.",
)
result_backend_option = click.option(
    "--result-backend", metavar="URL", default=None, callback=_or_global("result_backend"),
    help="Result backend (rpc://, redis://, db+postgresql://...), over routing.yaml's results.backend.",
)


def app_option(*, required: bool, help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """-A/--app for a subcommand, before or after its name (`amqtask -A proj worker`,
    `amqtask worker -A proj`); when `required`, missing from both is a usage error."""

    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        chosen = _or_global("app")(ctx, param, value)
        if required and chosen is None:
            raise click.MissingParameter(ctx=ctx, param=param)
        return chosen  # type: ignore[no-any-return]

    return click.option("-A", "--app", "app_spec", default=None, metavar="MODULE[:APP]", callback=callback,
                        help=help + (" Before or after the subcommand, as Celery's -A." if required else ""))


class LogLevel(click.Choice):
    """Celery's level names in any case; FATAL is CRITICAL, as in Celery and logging."""

    def __init__(self) -> None:
        super().__init__(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "FATAL"], case_sensitive=False)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        level = str(super().convert(value, param, ctx)).upper()
        return "CRITICAL" if level == "FATAL" else level


def fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn amqtask's errors into one clear line and the documented exit status."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ConfigError as exc:
            click.echo(format_problems(exc.problems) or str(exc), err=True)
            sys.exit(EXIT_USAGE)
        except (RoutingError, SerializationError, ScheduleError) as exc:
            fail(str(exc), EXIT_USAGE)
        except BrokerError as exc:
            fail(str(exc), EXIT_RUNTIME)
        except AmqtaskError as exc:
            fail(str(exc), EXIT_RUNTIME)

    return wrapper


def load(config_path: str | None) -> Settings:
    """Validated settings, or the problems on stderr and exit 2: routing.yaml (`config_path`,
    else the global -A App's settings, else the default file), with the global -b and
    --result-backend over it."""
    given = global_options()
    if config_path is None and given.app is not None:
        settings = _app_settings(given.app)
    else:
        settings = _checked(config_path)
    return with_overrides(settings, broker=given.broker, result_backend=given.result_backend)


def _checked(config_path: str | None) -> Settings:
    result = check_file(config_path)
    if result.settings is None:
        click.echo(format_problems(result.problems), err=True)
        sys.exit(EXIT_USAGE)
    if result.warnings:
        click.echo(format_problems(result.warnings), err=True)
    return result.settings


def _app_settings(app_spec: str) -> Settings:
    """The settings of the App `-A` names (its routing.yaml, config_from_object...), as
    Celery's commands take the broker from `-A proj`."""
    from ..app import load_app

    try:
        return load_app(app_spec).settings
    except ConfigError as exc:
        click.echo(format_problems(exc.problems) or str(exc), err=True)
        sys.exit(EXIT_USAGE)
    except AmqtaskError as exc:
        fail(str(exc), EXIT_USAGE)
        raise  # unreachable: fail() exits


def with_overrides(settings: Settings, *, broker: str | None, result_backend: str | None) -> Settings:
    """`settings` with a command line's broker URL and result backend over routing.yaml's;
    exit 2 when either is not a URL amqtask can use."""
    from ..app import with_result_backend
    from ..brokerurl import parse_broker_urls

    try:
        if broker:
            settings = dataclasses.replace(settings, broker=dataclasses.replace(
                settings.broker, urls=parse_broker_urls(broker)))
        if result_backend:
            settings = with_result_backend(settings, result_backend)
    except AmqtaskError as exc:
        fail(str(exc), EXIT_USAGE)
    return settings


def names(text: str | None) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def json_arg(text: str, kind: type, flag: str, example: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{flag} is not valid JSON ({exc.msg} at column {exc.colno}); expected {example}", EXIT_USAGE)
    if not isinstance(value, kind):
        fail(f"{flag} must be {example}", EXIT_USAGE)
    return value


def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
