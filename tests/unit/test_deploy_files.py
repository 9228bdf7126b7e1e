"""``docker-compose.yml``, ``worker/Dockerfile`` and ``worker/relay.env.example`` agree with
the project.

No Docker engine runs here, so the files are checked against what they name: commands and
options (parsed by the CLI's own click objects, as running them would), ``OUTBOX_*`` variables
(the click params' envvars), app targets (imported the way ``outbox-relay`` and uvicorn import
them, in a fresh interpreter with the service's environment), the console script of
``pyproject.toml``, the extras, and the start order.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from sqlalchemy.engine import make_url
from uvicorn.main import main as uvicorn_main

from outbox_events.relay.cli import main as outbox_relay_main

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest brings tomli on Python 3.10
    import tomli as tomllib

UseEnv = Callable[[dict[str, str]], None]
ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "worker" / "Dockerfile"
ENV_EXAMPLE = ROOT / "worker" / "relay.env.example"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS: dict[str, str] = PYPROJECT["project"]["scripts"]
CONSOLE_SCRIPT = "outbox-relay"
PLACEHOLDER_PASSWORD = "CHANGE-ME"


# -- reading the files ---------------------------------------------------------------------


def _interpolate(value: Any) -> Any:
    """Compose's variable substitution, as on a machine where none of them is set."""
    if isinstance(value, str):
        value = re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m[2] or "", value)
        return value.replace("$$", "$")
    if isinstance(value, dict):
        return {key: _interpolate(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolate(item) for item in value]
    return value


def load_compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict) and isinstance(loaded.get("services"), dict)
    interpolated: dict[str, Any] = _interpolate(loaded)
    return interpolated


@dataclasses.dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]]


def load_dockerfile() -> tuple[dict[str, str], list[Stage]]:
    """The global ARG defaults and the build stages, in order."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.lstrip().startswith("#"):
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        if (pending + raw).strip():
            lines.append((pending + raw).strip())
        pending = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = re.sub(r"--\S+\s+", "", rest).split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: global_args.get(m[1], ""), words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, image, []))
        elif not stages:
            if keyword == "ARG":
                arg_name, _, default = rest.partition("=")
                global_args[arg_name] = default
        else:
            stages[-1].instructions.append((keyword, rest))
    return global_args, stages


COMPOSE = load_compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
GLOBAL_ARGS, STAGES = load_dockerfile()
STAGE_BY_NAME = {stage.name: stage for stage in STAGES}


def stage_setting(stage_name: str, keyword: str) -> str | None:
    """The last ``keyword`` instruction in force in a stage (inherited from its base stages)."""
    stage: Stage | None = STAGE_BY_NAME.get(stage_name)
    while stage is not None:
        values = [rest for kw, rest in stage.instructions if kw == keyword]
        if values:
            return values[-1]
        stage = STAGE_BY_NAME.get(stage.base)
    return None


def root_image(stage_name: str) -> str:
    """The image a stage is ultimately built on."""
    stage = STAGE_BY_NAME[stage_name]
    while stage.base in STAGE_BY_NAME:
        stage = STAGE_BY_NAME[stage.base]
    return stage.base


def exec_form(text: str | None) -> list[str] | None:
    if text is None:
        return None
    value = json.loads(text)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), (
        f"use the exec form (a JSON list), so that signals reach the process: {text}"
    )
    return value


def healthcheck_command(text: str | None) -> list[str] | None:
    """The command of a ``HEALTHCHECK [--options] CMD [...]`` instruction."""
    if text is None or text.upper() == "NONE":
        return None
    match = re.match(r"^(?:--\S+\s+)*CMD\s+(.*)$", text)
    assert match, f"unexpected HEALTHCHECK: {text}"
    return exec_form(match[1])


def as_argv(value: str | list[str] | None) -> list[str] | None:
    if value is None:
        return None
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def image_stage(service: dict[str, Any]) -> str | None:
    """The Dockerfile stage a service runs, when it is built from worker/Dockerfile."""
    build = service.get("build")
    if not isinstance(build, dict):
        return None
    dockerfile = (
        ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
    ).resolve()
    if dockerfile != DOCKERFILE:
        return None
    return str(build.get("target", STAGES[-1].name))


def service_argv(service: dict[str, Any]) -> list[str] | None:
    """What a service runs: its entrypoint (its own or the image's) followed by its command."""
    stage = image_stage(service)
    entrypoint = as_argv(service.get("entrypoint"))
    command = as_argv(service.get("command"))
    if entrypoint is None and stage is not None:
        entrypoint = exec_form(stage_setting(stage, "ENTRYPOINT"))
        if command is None:
            command = exec_form(stage_setting(stage, "CMD"))
    argv = [*(entrypoint or []), *(command or [])]
    return argv or None


def service_env(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.partition("=")[::2] for item in environment)
    return {str(k): str(v) for k, v in environment.items() if v is not None}


def env_example() -> list[tuple[str, str, bool]]:
    """``(name, value, commented_out)`` of every ``NAME=value`` line of relay.env.example."""
    entries = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.match(r"^(#?)\s*([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            entries.append((match[2], match[3], bool(match[1])))
    return entries


def services_running(program: str) -> list[str]:
    return [
        name for name, service in SERVICES.items() if (service_argv(service) or [""])[0] == program
    ]


RELAY_SERVICES = services_running(CONSOLE_SCRIPT)
UVICORN_SERVICES = services_running("uvicorn")


# -- the CLI -------------------------------------------------------------------------------


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[UseEnv]:
    """Replace the OUTBOX_* variables click sees with a service's own."""

    def use(env: dict[str, str]) -> None:
        for name in list(os.environ):
            if name.startswith("OUTBOX_"):
                monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)

    yield use


def parse_cli(args: Sequence[str]) -> tuple[list[str], list[click.Context]]:
    """Parse ``outbox-relay ARGS`` with the CLI's own click objects, reading OUTBOX_* variables
    as running it would, without running anything; return the command path and the contexts
    from the group down to the command. Raises click.ClickException where the CLI would."""
    command: click.Command = outbox_relay_main
    contexts: list[click.Context] = []
    path: list[str] = []
    rest = list(args)
    while isinstance(command, click.Group):
        ctx = click.Context(
            command,
            info_name=path[-1] if path else CONSOLE_SCRIPT,
            parent=contexts[-1] if contexts else None,
        )
        with ctx.scope(cleanup=False):
            rest = click.Command.parse_args(command, ctx, rest)  # the group's own options
            if not rest:
                raise click.UsageError(f"no command after {' '.join(path) or CONSOLE_SCRIPT}")
            name, sub, rest = command.resolve_command(ctx, rest)
        assert name is not None and sub is not None
        contexts.append(ctx)
        path.append(name)
        command = sub
    contexts.append(command.make_context(path[-1], rest, parent=contexts[-1]))
    return path, contexts


def parse_or_fail(what: str, args: Sequence[str]) -> tuple[list[str], list[click.Context]]:
    try:
        return parse_cli(args)
    except click.ClickException as exc:
        pytest.fail(f"{what}: `outbox-relay {shlex.join(args)}` fails: {exc.format_message()}")


def envvars(contexts: Sequence[click.Context]) -> dict[str, click.Parameter]:
    """The variables the parameters of these commands read, by name."""
    found: dict[str, click.Parameter] = {}
    for ctx in contexts:
        for param in ctx.command.params:
            names = [param.envvar] if isinstance(param.envvar, str) else (param.envvar or [])
            found.update((name, param) for name in names)
    return found


def command_envvars(*path: str) -> dict[str, click.Parameter]:
    """The variables of ``outbox-relay PATH`` and of the groups above it."""
    contexts: list[click.Context] = []
    command: click.Command = outbox_relay_main
    for name in (CONSOLE_SCRIPT, *path):
        if name != CONSOLE_SCRIPT:
            assert isinstance(command, click.Group)
            sub = command.commands.get(name)
            assert sub is not None, f"outbox-relay has no command {' '.join(path)!r}"
            command = sub
        contexts.append(click.Context(command, info_name=name))
    return envvars(contexts)


def import_target(kind: str, target: str, env: dict[str, str]) -> str:
    """Import ``MODULE:ATTR`` in a fresh interpreter the way ``kind`` does, in the image's
    working directory (the repository root here) and the service's environment; return the
    type of what it names."""
    script = (
        "import sys\n"
        "kind, target = sys.argv[1:3]\n"
        "if kind == 'outbox-relay':\n"
        "    from outbox_events.relay.cli import load_outbox\n"
        "    value = load_outbox(target)\n"
        "else:\n"
        "    from uvicorn.importer import import_from_string\n"
        "    value = import_from_string(target)\n"
        "    assert callable(value), f'{target} is not an ASGI application'\n"
        "print(f'{type(value).__module__}.{type(value).__qualname__}')\n"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    result = subprocess.run(
        [sys.executable, "-c", script, kind, target],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{kind} cannot import {target}:\n{result.stderr}"
    return result.stdout.strip()


def seconds(duration: str | int | float) -> float:
    """A compose duration (``45s``, ``1m30s``, ``1500ms``) in seconds."""
    if isinstance(duration, (int, float)):
        return float(duration)
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


# -- compose: what runs --------------------------------------------------------------------


def test_compose_brings_up_the_database_the_jobs_the_app_and_the_emulators() -> None:
    assert {"postgres", "migrate", "app", "relay", "sqs", "pubsub"} <= set(SERVICES)
    assert SERVICES["postgres"]["image"].startswith("postgres:15")
    assert SERVICES["sqs"]["image"].startswith("motoserver/moto")
    pubsub = SERVICES["pubsub"]
    assert "google-cloud-cli" in pubsub["image"] or "cloud-sdk" in pubsub["image"]
    emulator = as_argv(pubsub.get("command")) or []
    assert "pubsub" in emulator and "start" in emulator, "the pubsub service runs the emulator"
    assert {"migrate", "relay"} <= set(RELAY_SERVICES), "migrate and relay run outbox-relay"
    assert UVICORN_SERVICES == ["app"], "the app service runs uvicorn"


@pytest.mark.parametrize("service", RELAY_SERVICES)
def test_outbox_relay_services_run_existing_commands_with_existing_options(
    service: str, environment: UseEnv
) -> None:
    environment(service_env(SERVICES[service]))
    argv = service_argv(SERVICES[service]) or []

    path, _contexts = parse_or_fail(service, argv[1:])

    assert path[0] in outbox_relay_main.commands


@pytest.mark.parametrize(
    "service",
    [name for name, s in SERVICES.items() if any(k.startswith("OUTBOX_") for k in service_env(s))],
)
def test_outbox_variables_of_a_service_are_options_of_its_command(
    service: str, environment: UseEnv
) -> None:
    env = service_env(SERVICES[service])
    environment(env)
    argv = service_argv(SERVICES[service]) or []
    assert argv[:1] == [CONSOLE_SCRIPT], f"{service} sets OUTBOX_* variables but runs {argv}"

    path, contexts = parse_or_fail(service, argv[1:])

    known = envvars(contexts)
    unknown = sorted(name for name in env if name.startswith("OUTBOX_") and name not in known)
    assert not unknown, f"`outbox-relay {' '.join(path)}` has no option for {unknown}"


@pytest.mark.parametrize("service", RELAY_SERVICES)
def test_the_app_target_of_each_relay_service_is_an_outbox(
    service: str, environment: UseEnv
) -> None:
    env = service_env(SERVICES[service])
    environment(env)
    path, contexts = parse_or_fail(service, (service_argv(SERVICES[service]) or [])[1:])
    target = contexts[-1].params.get("app")
    if path in (["run"], ["migrate"]):
        assert target, f"{service}: `outbox-relay {path[0]}` is given no APP"
    if not target:
        return
    if "OUTBOX_APP" in env:
        assert env["OUTBOX_APP"] == target, f"{service}: OUTBOX_APP and APP disagree"

    assert import_target(CONSOLE_SCRIPT, target, env) == "outbox_events.outbox.Outbox"


@pytest.mark.parametrize("service", UVICORN_SERVICES)
def test_uvicorn_targets_import(service: str) -> None:
    env = service_env(SERVICES[service])
    argv = service_argv(SERVICES[service]) or []
    try:
        ctx = uvicorn_main.make_context("uvicorn", argv[1:])
    except click.ClickException as exc:
        pytest.fail(f"{service}: `{shlex.join(argv)}` fails: {exc.format_message()}")

    assert import_target("uvicorn", ctx.params["app"], env) == "fastapi.applications.FastAPI"


def test_services_reach_each_other_by_service_name() -> None:
    postgres = service_env(SERVICES["postgres"])
    checked = 0
    for name, service in SERVICES.items():
        for variable, value in service_env(service).items():
            if variable.endswith("DATABASE_URL"):
                url = make_url(value)
                assert url.host in SERVICES, f"{name}: {variable} points at {url.host}"
                assert (url.username, url.password, url.database) == (
                    postgres["POSTGRES_USER"],
                    postgres["POSTGRES_PASSWORD"],
                    postgres["POSTGRES_DB"],
                ), f"{name}: {variable} does not match the postgres service's role and database"
                checked += 1
            elif variable.endswith(("_ENDPOINT_URL", "_EMULATOR_HOST")):
                host = re.sub(r"^\w+://", "", value).split(":")[0].split("/")[0]
                assert host in SERVICES, f"{name}: {variable} points at {host}, not a service"
                checked += 1
    assert checked >= 5, "DATABASE_URL of migrate, app and relay, and the two emulators"


# -- compose: order and lifecycle ----------------------------------------------------------


def test_the_migration_runs_once_before_the_app_and_the_relay(environment: UseEnv) -> None:
    migrate = SERVICES["migrate"]
    environment(service_env(migrate))
    path, _ = parse_or_fail("migrate", (service_argv(migrate) or [])[1:])

    assert path == ["migrate"]
    assert migrate.get("restart", "no") == "no", "a one-shot job is not restarted"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("app", "relay"):
        assert SERVICES[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        ), f"{name} starts only after the migration succeeded"


def test_services_wait_only_for_health_that_is_checked() -> None:
    postgres_check = as_argv(SERVICES["postgres"]["healthcheck"]["test"]) or []
    assert "pg_isready" in " ".join(postgres_check)
    for name, service in SERVICES.items():
        for other, condition in (service.get("depends_on") or {}).items():
            assert other in SERVICES, f"{name} depends on a missing service {other}"
            if condition.get("condition") == "service_healthy":
                stage = image_stage(SERVICES[other])
                assert SERVICES[other].get("healthcheck") or (
                    stage and stage_setting(stage, "HEALTHCHECK")
                ), f"{name} waits for {other} to be healthy, but nothing checks {other}'s health"


@pytest.mark.parametrize(
    "service", [name for name, s in SERVICES.items() if image_stage(s) and s.get("restart") != "no"]
)
def test_healthchecks_of_long_running_services_can_pass(service: str, environment: UseEnv) -> None:
    """The image's HEALTHCHECK runs `outbox-relay status`: a service that keeps it needs an
    APP or a database URL in its environment, or it is never healthy."""
    definition = SERVICES[service]
    env = service_env(definition)
    environment(env)
    own = definition.get("healthcheck")
    if own is not None:
        argv = as_argv(own["test"]) or []
        assert argv[:1] in (["CMD"], ["CMD-SHELL"], ["NONE"]), f"{service}: healthcheck {argv}"
        argv = argv[1:]
    else:
        argv = (
            healthcheck_command(stage_setting(image_stage(definition) or "", "HEALTHCHECK")) or []
        )
        assert argv, f"{service} has no health check"
    if argv[:1] != [CONSOLE_SCRIPT]:
        assert argv, f"{service}: empty health check"
        return

    path, contexts = parse_or_fail(f"{service} healthcheck", argv[1:])

    params = contexts[-1].params
    assert params.get("app") or params.get("database_url"), (
        f"{service}: `outbox-relay {' '.join(path)}` has neither APP (OUTBOX_APP) nor a "
        "database URL in this service's environment"
    )


def test_relay_replicas_stop_gracefully_within_the_grace_period(environment: UseEnv) -> None:
    relay = SERVICES["relay"]
    environment(service_env(relay))
    path, contexts = parse_or_fail("relay", (service_argv(relay) or [])[1:])
    shutdown_timeout = contexts[-1].params["shutdown_timeout"]

    assert path == ["run"]
    assert relay["deploy"]["replicas"] >= 2
    assert "container_name" not in relay, "a fixed container name allows a single replica"
    assert not relay.get("ports"), "published host ports allow a single replica"
    assert seconds(relay.get("stop_grace_period", "10s")) >= shutdown_timeout, (
        "the container must be given longer to stop than the relay's shutdown timeout"
    )
    assert relay.get("stop_signal", "SIGTERM") == "SIGTERM"


def test_compose_builds_from_existing_files_stages_and_extras() -> None:
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    built = [service for service in SERVICES.values() if "build" in service]
    assert built, "the example services are built from worker/Dockerfile"
    for service in built:
        build = service["build"]
        context = ROOT / build.get("context", ".")
        assert (context / build.get("dockerfile", "Dockerfile")).is_file()
        assert build.get("target", STAGES[-1].name) in STAGE_BY_NAME
        wanted = str((build.get("args") or {}).get("EXTRAS", "postgres"))
        assert set(wanted.split(",")) <= extras, f"unknown extras in {wanted!r}"


# -- the image -----------------------------------------------------------------------------


def test_the_image_entrypoint_is_the_projects_console_script() -> None:
    final = STAGES[-1].name
    entrypoint = exec_form(stage_setting(final, "ENTRYPOINT"))

    assert entrypoint == [CONSOLE_SCRIPT]
    assert CONSOLE_SCRIPT in SCRIPTS, "pyproject [project.scripts] declares outbox-relay"
    module, _, attribute = SCRIPTS[CONSOLE_SCRIPT].partition(":")
    assert getattr(__import__(module, fromlist=[attribute]), attribute) is outbox_relay_main
    for stage in STAGES[1:]:
        if stage_setting(stage.name, "ENTRYPOINT") is not None:
            assert exec_form(stage_setting(stage.name, "ENTRYPOINT")) == entrypoint


def test_the_image_runs_the_relay_by_default_with_the_app_from_the_environment(
    environment: UseEnv,
) -> None:
    environment({"OUTBOX_APP": "myapp.events:outbox"})
    command = exec_form(stage_setting(STAGES[-1].name, "CMD")) or []

    path, contexts = parse_or_fail("the image's CMD", command)

    assert path == ["run"]
    assert contexts[-1].params["app"] == "myapp.events:outbox"


def test_the_image_healthcheck_runs_an_existing_command(environment: UseEnv) -> None:
    environment({"OUTBOX_APP": "myapp.events:outbox"})
    check = healthcheck_command(stage_setting(STAGES[-1].name, "HEALTHCHECK"))
    assert check is not None and check[0] == CONSOLE_SCRIPT

    path, _ = parse_or_fail("the image's HEALTHCHECK", check[1:])

    assert path == ["status"]


def test_the_image_installs_the_package_with_postgres_as_an_unprivileged_user() -> None:
    final = STAGES[-1].name
    user = stage_setting(final, "USER")
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    arg_defaults = dict(
        rest.partition("=")[::2]
        for stage in STAGES
        for keyword, rest in stage.instructions
        if keyword == "ARG"
    )

    assert root_image(final) == "python:3.11-slim"
    assert all(root_image(stage.name) == "python:3.11-slim" for stage in STAGES)
    assert user and user.split(":")[0] not in ("root", "0")
    assert "postgres" in arg_defaults.get("EXTRAS", "").split(",")
    assert set(arg_defaults["EXTRAS"].split(",")) <= extras
    installs = [rest for stage in STAGES for kw, rest in stage.instructions if kw == "RUN"]
    assert any("pip install" in run and "[${EXTRAS}]" in run for run in installs)


def test_the_image_copies_only_files_that_exist() -> None:
    for stage in STAGES:
        for keyword, rest in stage.instructions:
            if keyword != "COPY" or "--from=" in rest:
                continue
            sources = [word for word in rest.split() if not word.startswith("--")][:-1]
            for source in sources:
                assert (ROOT / source).exists(), f"stage {stage.name} copies missing {source}"


# -- the settings file ---------------------------------------------------------------------


def test_relay_env_example_documents_every_setting_of_run_and_migrate() -> None:
    documented = {name for name, _, _ in env_example() if name.startswith("OUTBOX_")}
    settings = {**command_envvars("run"), **command_envvars("migrate")}

    assert documented - set(settings) == set(), "variables no option of run/migrate reads"
    assert set(settings) - documented == set(), "settings missing from relay.env.example"


def test_relay_env_example_values_are_valid_and_defaults_are_true(environment: UseEnv) -> None:
    environment({})  # no OUTBOX_* variable: every option at its default
    defaults: dict[str, tuple[click.Parameter, Any]] = {}
    for args in (["run", "placeholder.module:outbox"], ["migrate"]):
        _, contexts = parse_cli(args)
        for ctx in contexts:
            for name, param in envvars([ctx]).items():
                defaults[name] = (param, ctx.params.get(param.name or ""))
    checked = 0
    for name, value, _commented in env_example():
        if name not in defaults:
            continue
        param, default = defaults[name]
        try:
            converted = param.type.convert(value, param, None)
        except click.BadParameter as exc:
            pytest.fail(f"{name}={value}: {exc.format_message()}")
        if default is not None and name != "OUTBOX_APP":
            assert converted == default, f"{name}={value}, but the default is {default!r}"
            checked += 1
    assert checked >= 4, "log level, shutdown timeout, until-idle and table have defaults"


def test_relay_env_example_holds_no_real_password() -> None:
    urls = [(name, value) for name, value, _ in env_example() if "://" in value]

    assert any(name == "DATABASE_URL" for name, _ in urls), "the example's app reads DATABASE_URL"
    for name, value in urls:
        password = make_url(value).password
        assert password in (None, PLACEHOLDER_PASSWORD), f"{name} holds a real-looking password"
