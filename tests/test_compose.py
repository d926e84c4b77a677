"""The compose stack, its .env.example and the worker image, checked without Docker.

docker-compose.yml is validated against the Compose specification's JSON
schema, the copy that check-jsonschema ships. The rules that the schema cannot
express are checked here: start order, health checks, loopback ports, pinned
images, no secret in the file, every variable known to the settings, and a
Dockerfile that copies every module the project ships.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from fnmatch import fnmatch
from importlib import resources
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
import yaml
from dotenv import dotenv_values
from jsonschema import Draft202012Validator
from sqlalchemy.engine import make_url
from temporalio.envconfig import ClientConfigProfile

from migrations import UPGRADE_COMMAND
from settings import Settings, load_settings
from stack import SEARCH_ATTRIBUTES

PROJECT_DIR = Path(__file__).resolve().parent.parent
COMPOSE_FILE = PROJECT_DIR / "docker-compose.yml"
ENV_EXAMPLE = PROJECT_DIR / ".env.example"
DOCKERFILE = PROJECT_DIR / "Dockerfile"
DOCKERIGNORE = PROJECT_DIR / ".dockerignore"
PYPROJECT = PROJECT_DIR / "pyproject.toml"

SETTINGS_VARIABLES = frozenset(name.upper() for name in Settings.model_fields)

# Variables that the SDK's client configuration (temporalio.envconfig, SDK
# 1.35) reads for the worker's connection. The settings then replace the
# address and namespace with their TEMPORAL_ADDRESS and TEMPORAL_NAMESPACE.
# test_envconfig_reads_variable checks each variable against the SDK, and
# test_envconfig_reads_profile_from_config_file the last two. The SDK's Core
# also reads TEMPORAL_CODEC_* and TEMPORAL_TLS_DISABLE_HOST_VERIFICATION, but
# they have no effect on a Python client, so they are not listed.
ENVCONFIG_VARIABLES = frozenset(
    {
        "TEMPORAL_ADDRESS",
        "TEMPORAL_NAMESPACE",
        "TEMPORAL_API_KEY",
        "TEMPORAL_TLS",
        "TEMPORAL_TLS_CLIENT_CERT_PATH",
        "TEMPORAL_TLS_CLIENT_CERT_DATA",
        "TEMPORAL_TLS_CLIENT_KEY_PATH",
        "TEMPORAL_TLS_CLIENT_KEY_DATA",
        "TEMPORAL_TLS_SERVER_CA_CERT_PATH",
        "TEMPORAL_TLS_SERVER_CA_CERT_DATA",
        "TEMPORAL_TLS_SERVER_NAME",
        "TEMPORAL_PROFILE",
        "TEMPORAL_CONFIG_FILE",
    }
)
# One gRPC header per variable, named by the rest of the variable's name.
ENVCONFIG_PREFIX = "TEMPORAL_GRPC_META_"
# Each variable with a value, and the profile the SDK makes of it alone.
ENVCONFIG_CASES = [
    (
        "TEMPORAL_ADDRESS",
        "tickets.example.com:7233",
        {"address": "tickets.example.com:7233"},
    ),
    ("TEMPORAL_NAMESPACE", "tickets.a1b2c", {"namespace": "tickets.a1b2c"}),
    ("TEMPORAL_API_KEY", "test-api-key", {"api_key": "test-api-key"}),
    ("TEMPORAL_TLS", "false", {"tls": {"disabled": True}}),
    (
        "TEMPORAL_TLS_CLIENT_CERT_PATH",
        "/certs/client.pem",
        {"tls": {"client_cert": {"path": "/certs/client.pem"}}},
    ),
    (
        "TEMPORAL_TLS_CLIENT_CERT_DATA",
        "client certificate",
        {"tls": {"client_cert": {"data": "client certificate"}}},
    ),
    (
        "TEMPORAL_TLS_CLIENT_KEY_PATH",
        "/certs/client.key",
        {"tls": {"client_key": {"path": "/certs/client.key"}}},
    ),
    (
        "TEMPORAL_TLS_CLIENT_KEY_DATA",
        "client key",
        {"tls": {"client_key": {"data": "client key"}}},
    ),
    (
        "TEMPORAL_TLS_SERVER_CA_CERT_PATH",
        "/certs/ca.pem",
        {"tls": {"server_ca_cert": {"path": "/certs/ca.pem"}}},
    ),
    (
        "TEMPORAL_TLS_SERVER_CA_CERT_DATA",
        "ca certificate",
        {"tls": {"server_ca_cert": {"data": "ca certificate"}}},
    ),
    (
        "TEMPORAL_TLS_SERVER_NAME",
        "tickets.example.com",
        {"tls": {"server_name": "tickets.example.com"}},
    ),
    ("TEMPORAL_GRPC_META_X_TENANT", "support", {"grpc_meta": {"x-tenant": "support"}}),
]

# Values for the variables that .env.example leaves empty because an
# operator must choose them.
FILLED_IN = {
    "TEMPORAL_DB_PASSWORD": "3f9c2a7be41d08c6",
    "RECORDS_DB_PASSWORD": "a81d4e6f0b3c92d7",
    "MAIL_FROM": "Support Desk <no-reply@support.example.com>",
    "OPS_EMAIL": "ops@support.example.com",
}

# Folders with Python files that are not part of the shipped project.
NOT_SHIPPED = frozenset({"tests", "bench", "scripts", "examples", "docs"})

# Environment variable names that hold a password, key or token.
SECRET_NAME = re.compile(r"PASSWORD|PWD|SECRET|TOKEN|API_KEY|KEY_DATA|_KEYS?$")
# A password in the user part of a URL, as in scheme://user:password@host.
URL_PASSWORD = re.compile(r"://[^/\s:@]+:(?P<password>[^@\s]+)@")
# A run of 32 or more key-like characters, as a base64 or hex key would be.
KEY_LIKE = re.compile(r"[A-Za-z0-9+=_-]{32,}")

# Compose's variable references: $$ for a literal $, ${NAME}, ${NAME:-default},
# ${NAME-default}, ${NAME:?error}, ${NAME?error}, ${NAME:+other},
# ${NAME+other} and $NAME.
REFERENCE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)"
    r"(?:(?P<operator>:?[-?+])(?P<argument>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(Exception):
    """A ${NAME:?error} or ${NAME?error} reference to a variable without a value."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    """Replace variable references in ``text`` as ``docker compose`` does."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["named"]
        value = variables.get(name)
        operator = match["operator"]
        if operator is None:
            return value or ""

        # With a colon, an empty value counts as unset.
        is_set = bool(value) if operator.startswith(":") else value is not None
        argument = match["argument"]
        if operator.endswith("-"):
            return value if is_set and value is not None else argument
        if operator.endswith("?"):
            if not is_set or value is None:
                raise MissingVariable(name, argument)
            return value
        return argument if is_set else ""

    return REFERENCE.sub(replace, text)


def referenced_variables(text: str) -> set[str]:
    return {
        match["braced"] or match["named"]
        for match in REFERENCE.finditer(text)
        if not match["escaped"]
    }


def string_values(node: Any) -> Iterator[str]:
    """Yield every string value in a loaded YAML document, keys excluded."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from string_values(value)
    elif isinstance(node, list):
        for item in node:
            yield from string_values(item)


def find_secrets(node: Any, path: str = "") -> list[str]:
    """Return the places in a YAML document that hold a literal secret.

    A value under a secret-like name (SMTP_PASSWORD, POSTGRES_PWD, ...) must
    be one variable reference with no default, a URL's password must be such a
    reference, and no value may contain a long key-like string outside one.
    """
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            place = f"{path}.{key}" if path else str(key)
            if SECRET_NAME.search(str(key).upper()) and isinstance(value, str):
                if not _is_bare_reference(value):
                    found.append(f"{place}: a literal value under a secret's name")
            found += find_secrets(value, place)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            found += find_secrets(item, f"{path}[{index}]")
    elif isinstance(node, str):
        for match in URL_PASSWORD.finditer(node):
            if not _is_bare_reference(match["password"]):
                found.append(f"{path}: a password in a URL")
        outside_references = REFERENCE.sub("", node)
        for match in KEY_LIKE.finditer(outside_references):
            token = match.group()
            if re.search(r"[0-9]", token) and re.search(r"[A-Za-z]", token):
                found.append(f"{path}: a key-like string {token[:6]}...")
    return found


def _is_bare_reference(value: str) -> bool:
    # One reference and nothing else, whose default (if any) is empty.
    match = REFERENCE.fullmatch(value)
    if match is None or match["escaped"]:
        return False
    operator = match["operator"] or ""
    return not operator.endswith(("-", "+")) or match["argument"] == ""


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """Return (INSTRUCTION, arguments) pairs, with continued lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    instructions = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, arguments = line.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def copy_sources(instructions: list[tuple[str, str]]) -> list[str]:
    """Return the build-context sources of every COPY, not of COPY --from."""
    sources = []
    for keyword, arguments in instructions:
        if keyword != "COPY":
            continue
        words = arguments.split()
        if any(word.startswith("--from") for word in words):
            continue
        paths = [word for word in words if not word.startswith("--")]
        sources += paths[:-1]
    return sources


def settings_from(
    environment: Mapping[str, str],
    monkeypatch: pytest.MonkeyPatch,
    directory: Path,
) -> Settings:
    """Load the settings from ``environment`` alone, as a container would."""
    for name in list(os.environ):
        upper = name.upper()
        if upper in SETTINGS_VARIABLES or upper.startswith("TEMPORAL_"):
            monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    # An empty folder, so no .env file of the developer is read.
    monkeypatch.chdir(directory)
    return load_settings()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose["services"]
    return services


@pytest.fixture(scope="module")
def compose_schema() -> dict[str, Any]:
    vendored = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads(
        vendored.joinpath("compose-spec.json").read_text(encoding="utf-8")
    )
    return schema


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    values = dotenv_values(ENV_EXAMPLE, interpolate=False)
    return {name: value or "" for name, value in values.items()}


@pytest.fixture(scope="module")
def env_file(env_example: dict[str, str]) -> dict[str, str]:
    """.env.example with the values an operator must choose filled in."""
    return {
        name: value or FILLED_IN.get(name, "") for name, value in env_example.items()
    }


def one_shot_services(services: dict[str, dict[str, Any]]) -> set[str]:
    """Return the services that others wait for to complete, such as migrate."""
    return {
        name
        for service in services.values()
        for name, dependency in service.get("depends_on", {}).items()
        if dependency.get("condition") == "service_completed_successfully"
    }


def worker_image_services(services: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Return the services built from the project's Dockerfile."""
    return {name: service for name, service in services.items() if "build" in service}


# The compose file


def test_compose_file_matches_compose_schema(
    compose: dict[str, Any], compose_schema: dict[str, Any]
) -> None:
    validator = Draft202012Validator(compose_schema)
    errors = [
        f"{'/'.join(str(part) for part in error.absolute_path)}: {error.message}"
        for error in validator.iter_errors(compose)
    ]

    assert errors == []


@pytest.mark.parametrize(
    ("mistake", "edit"),
    [
        ("misspelled key", lambda c: c["services"]["worker"].update(healthchek={})),
        (
            "unknown condition",
            lambda c: c["services"]["worker"]["depends_on"]["migrate"].update(
                condition="service_done"
            ),
        ),
        ("port as a list", lambda c: c["services"]["temporal"].update(ports=[[7233]])),
    ],
)
def test_compose_schema_rejects_mistake(
    compose: dict[str, Any],
    compose_schema: dict[str, Any],
    mistake: str,
    edit: Any,
) -> None:
    broken = json.loads(json.dumps(compose))
    edit(broken)

    errors = list(Draft202012Validator(compose_schema).iter_errors(broken))

    assert errors, f"the schema accepted a {mistake}"


def test_compose_uses_supported_interpolation(compose: dict[str, Any]) -> None:
    # Compose rejects a `$` that starts no valid reference, such as `${1}`,
    # so a shell's `$` is written `$$`.
    stray = [text for text in string_values(compose) if "$" in REFERENCE.sub("", text)]

    assert stray == []


def test_compose_depends_on_has_conditions(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        for target, dependency in service.get("depends_on", {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            assert "condition" in dependency, f"{name} -> {target}"
            if dependency["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{name} -> {target}"


def test_compose_long_running_services_are_watched(
    services: dict[str, dict[str, Any]],
) -> None:
    one_shots = one_shot_services(services)

    assert one_shots == {"temporal-schema", "temporal-setup", "migrate"}
    for name, service in services.items():
        if name in one_shots:
            assert service.get("restart", "no") in ("no", "on-failure"), name
            continue
        assert service["healthcheck"]["test"], name
        assert service["restart"] == "unless-stopped", name


def test_compose_start_order(services: dict[str, dict[str, Any]]) -> None:
    def condition(service: str, target: str) -> str:
        condition: str = services[service]["depends_on"][target]["condition"]
        return condition

    assert condition("temporal-schema", "temporal-postgresql") == "service_healthy"
    assert condition("temporal", "temporal-schema") == "service_completed_successfully"
    assert condition("temporal-setup", "temporal") == "service_healthy"
    assert condition("temporal-ui", "temporal") == "service_healthy"
    assert condition("migrate", "records-postgresql") == "service_healthy"
    assert condition("worker", "migrate") == "service_completed_successfully"
    assert condition("worker", "temporal-setup") == "service_completed_successfully"
    assert condition("worker", "mailpit") == "service_healthy"


def test_compose_ports_listen_on_loopback(services: dict[str, dict[str, Any]]) -> None:
    published = []
    for name, service in services.items():
        for port in service.get("ports", []):
            assert isinstance(port, dict), f"{name}: use the long port syntax"
            assert port["host_ip"] == "127.0.0.1", name
            published.append((name, port["target"]))

    assert sorted(published) == [
        ("mailpit", 8025),
        ("temporal", 7233),
        ("temporal-ui", 8080),
    ]


def test_compose_volumes_are_named(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    declared = set(compose["volumes"])
    used = set()
    for name, service in services.items():
        for mount in service.get("volumes", []):
            assert isinstance(mount, str), name
            source, _, target = mount.partition(":")
            assert target.startswith("/"), f"{name}: anonymous volume {mount}"
            assert source in declared, f"{name}: {source} is not a named volume"
            used.add(source)

    assert used == declared


def test_compose_images_are_pinned(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    images = {name: s["image"] for name, s in services.items() if "image" in s}

    for name, image in images.items():
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest", f"{name}: {image}"
        assert re.search(r"[0-9]", tag), f"{name}: {image} names no version"
    # The admin tools' schema files must be those of the server's release.
    server_tag = images["temporal"].rpartition(":")[2]
    assert images["temporal-schema"] == f"temporalio/admin-tools:{server_tag}"
    assert images["temporal-setup"] == compose["x-admin-tools-image"]


def test_compose_holds_no_secret(compose: dict[str, Any]) -> None:
    assert find_secrets(compose) == []


@pytest.mark.parametrize(
    "document",
    [
        {"environment": {"SMTP_PASSWORD": "hunter2"}},
        {"environment": {"POSTGRES_PWD": "${TEMPORAL_DB_PASSWORD:-temporal}"}},
        {"environment": {"DATABASE_URL": "postgresql://app:s3cret@db/app"}},
        {"command": ["--key", "0123456789abcdef0123456789abcdef"]},
        {"environment": {"TEMPORAL_API_KEY": "eyJhbGciOi"}},
    ],
)
def test_find_secrets_flags_literal_secret(document: dict[str, Any]) -> None:
    assert find_secrets(document) != []


@pytest.mark.parametrize(
    "document",
    [
        {"environment": {"SMTP_PASSWORD": "${SMTP_PASSWORD:-}"}},
        {"environment": {"POSTGRES_PWD": "${TEMPORAL_DB_PASSWORD:?set it}"}},
        {"environment": {"DATABASE_URL": "postgresql://app:${DB_PASSWORD}@db/app"}},
        {"environment": {"SMTP_HOST": "mailpit"}},
    ],
)
def test_find_secrets_passes_reference(document: dict[str, Any]) -> None:
    assert find_secrets(document) == []


def test_compose_registers_every_search_attribute(
    services: dict[str, dict[str, Any]],
) -> None:
    script = "\n".join(services["temporal-setup"]["command"])
    registered = re.findall(
        r"search-attribute create --name (\S+) --type (\S+)", script
    )

    assert len(registered) == len(set(registered))
    assert dict(registered) == SEARCH_ATTRIBUTES


def test_compose_migrates_before_worker(
    services: dict[str, dict[str, Any]],
) -> None:
    migrations_main = find_spec("migrations.__main__")

    assert services["migrate"]["command"] == UPGRADE_COMMAND.split()
    assert migrations_main is not None, "python -m migrations needs __main__.py"
    assert (
        services["migrate"]["environment"]["DATABASE_URL"]
        == services["worker"]["environment"]["DATABASE_URL"]
    )


def test_compose_metrics_stay_inside_network(
    services: dict[str, dict[str, Any]],
) -> None:
    worker = services["worker"]
    port = worker["environment"]["METRICS_PORT"]

    assert "ports" not in worker
    assert worker["expose"] == [port]
    assert worker["environment"]["METRICS_ADDRESS"] == "0.0.0.0"
    assert f"http://127.0.0.1:{port}/metrics" in " ".join(worker["healthcheck"]["test"])


# Variables and settings


def test_worker_image_variables_are_settings(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in worker_image_services(services).items():
        for variable in service["environment"]:
            assert (
                variable in SETTINGS_VARIABLES
                or variable in ENVCONFIG_VARIABLES
                or variable.startswith(ENVCONFIG_PREFIX)
            ), f"{name} sets {variable}, which neither the settings nor the SDK read"


def test_worker_sets_required_settings(services: dict[str, dict[str, Any]]) -> None:
    required = {
        name.upper()
        for name, field in Settings.model_fields.items()
        if field.is_required()
    }

    for name, service in worker_image_services(services).items():
        assert required <= set(service["environment"]), name


def test_worker_settings_load_from_compose(
    services: dict[str, dict[str, Any]],
    env_file: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    environment = {
        name: interpolate(str(value), env_file)
        for name, value in services["worker"]["environment"].items()
    }

    settings = settings_from(environment, monkeypatch, tmp_path)

    url = make_url(settings.database_url)
    assert url.drivername == "postgresql+psycopg"
    assert url.host == "records-postgresql"
    assert url.database == "ticket_guard"
    assert url.password == FILLED_IN["RECORDS_DB_PASSWORD"]
    assert settings.temporal_address == "temporal:7233"
    assert settings.temporal_namespace == "default"
    assert settings.smtp_host == "mailpit"
    assert settings.smtp_port == 1025
    assert settings.smtp_username is None
    assert settings.smtp_password is None
    assert settings.smtp_tls is None
    assert settings.mail_from == FILLED_IN["MAIL_FROM"]
    assert settings.ops_email == FILLED_IN["OPS_EMAIL"]
    assert settings.payload_encryption_key is None
    assert settings.payload_decryption_keys == []
    assert settings.log_format == "json"
    assert settings.metrics_bind_address == "0.0.0.0:9464"


def test_migrate_settings_load_from_compose(
    services: dict[str, dict[str, Any]],
    env_file: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    environment = {
        name: interpolate(str(value), env_file)
        for name, value in services["migrate"]["environment"].items()
    }

    settings = settings_from(environment, monkeypatch, tmp_path)

    assert make_url(settings.database_url).host == "records-postgresql"


def test_compose_requires_operator_choices(
    compose: dict[str, Any], env_example: dict[str, str]
) -> None:
    missing = set()
    for text in string_values(compose):
        try:
            interpolate(text, env_example)
        except MissingVariable as error:
            missing.add(error.name)

    assert missing == set(FILLED_IN)


def test_env_example_matches_compose(
    compose: dict[str, Any],
    services: dict[str, dict[str, Any]],
    env_example: dict[str, str],
) -> None:
    referenced = set()
    for text in string_values(compose):
        referenced |= referenced_variables(text)
    worker_environment = services["worker"]["environment"]

    assert referenced <= set(env_example), "document these in .env.example"
    for name in env_example:
        if name.startswith("COMPOSE_"):
            continue
        assert name in referenced, f"{name} in .env.example is never used"
        if name in SETTINGS_VARIABLES or name in ENVCONFIG_VARIABLES:
            # A setting in .env must reach the worker under its own name.
            assert referenced_variables(str(worker_environment.get(name, ""))) == {
                name
            }, name


def test_env_example_holds_no_secret(env_example: dict[str, str]) -> None:
    for name, value in env_example.items():
        if SECRET_NAME.search(name):
            assert value == "", name


def test_envconfig_cases_cover_every_variable() -> None:
    read_from_file = {"TEMPORAL_PROFILE", "TEMPORAL_CONFIG_FILE"}
    covered = {variable for variable, _, _ in ENVCONFIG_CASES}

    assert covered - ENVCONFIG_VARIABLES == {"TEMPORAL_GRPC_META_X_TENANT"}
    assert ENVCONFIG_VARIABLES - covered == read_from_file


@pytest.mark.parametrize(("variable", "value", "expected"), ENVCONFIG_CASES)
def test_envconfig_reads_variable(
    variable: str, value: str, expected: dict[str, Any]
) -> None:
    profile = ClientConfigProfile.load(
        disable_file=True, override_env_vars={variable: value}
    )

    assert profile.to_dict() == expected


def test_envconfig_reads_profile_from_config_file(tmp_path: Path) -> None:
    config_file = tmp_path / "temporal.toml"
    config_file.write_text(
        '[profile.cloud]\naddress = "tickets.a1b2c.tmprl.cloud:7233"\n',
        encoding="utf-8",
    )

    profile = ClientConfigProfile.load(
        override_env_vars={
            "TEMPORAL_CONFIG_FILE": str(config_file),
            "TEMPORAL_PROFILE": "cloud",
        }
    )

    assert profile.address == "tickets.a1b2c.tmprl.cloud:7233"


# The Dockerfile


def test_dockerfile_copies_every_shipped_module() -> None:
    setuptools = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"][
        "setuptools"
    ]
    sources = copy_sources(
        dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))
    )

    for module in setuptools["py-modules"]:
        assert any(fnmatch(f"{module}.py", source) for source in sources), module
    for package in setuptools["packages"]:
        top_level = package.split(".")[0]
        assert top_level in {source.rstrip("/") for source in sources}, package


def test_dockerignore_keeps_copied_sources() -> None:
    sources = copy_sources(
        dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))
    )
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]

    for source in sources:
        for pattern in patterns:
            assert not fnmatch(source.rstrip("/"), pattern), f"{pattern} hides {source}"
    assert ".env" in patterns


def test_pyproject_lists_every_module() -> None:
    setuptools = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"][
        "setuptools"
    ]
    modules = {path.stem for path in PROJECT_DIR.glob("*.py")}
    packages = set()
    for folder in PROJECT_DIR.iterdir():
        if folder.name in NOT_SHIPPED or not (folder / "__init__.py").exists():
            continue
        for init in folder.rglob("__init__.py"):
            relative = init.parent.relative_to(PROJECT_DIR)
            packages.add(".".join(relative.parts))

    assert modules <= set(setuptools["py-modules"])
    assert packages <= set(setuptools["packages"])


def test_dockerfile_runs_slim_and_unprivileged() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))
    stages = [arguments for keyword, arguments in instructions if keyword == "FROM"]
    last_stage = max(
        index for index, (keyword, _) in enumerate(instructions) if keyword == "FROM"
    )
    runtime = instructions[last_stage:]
    users = [arguments for keyword, arguments in runtime if keyword == "USER"]
    installs = " ".join(arguments for keyword, arguments in runtime if keyword == "RUN")
    pip_commands = [
        arguments
        for keyword, arguments in instructions
        if keyword == "RUN" and "pip " in arguments
    ]

    for stage in stages:
        assert "-slim" in stage.split()[0], stage
    assert users, "the image runs as root"
    assert users[-1] not in ("root", "0")
    assert re.search(r"apt-get install [^&]*\btzdata\b", installs)
    # Only the main dependencies: no extra such as ".[dev]" or "ticket-guard[local]".
    for command in pip_commands:
        assert "[" not in command, command
    assert ("CMD", '["python", "-m", "worker"]') in runtime
