"""Settings from the environment and .env: defaults, parsing, errors, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from settings import SettingsError, load_settings

VARIABLES = [
    "TEMPORAL_ADDRESS",
    "TEMPORAL_NAMESPACE",
    "TEMPORAL_TASK_QUEUE",
    "DATABASE_URL",
    "SMTP_HOST",
    "SMTP_PORT",
    "SMTP_USERNAME",
    "SMTP_PASSWORD",
    "SMTP_TLS",
    "SMTP_TIMEOUT_SECONDS",
    "MAIL_FROM",
    "OPS_EMAIL",
    "DEFAULT_TIMEZONE",
    "POLICY_OVERRIDES",
    # Read by the Temporal client profile of temporal_connect_config().
    "TEMPORAL_CONFIG_FILE",
    "TEMPORAL_PROFILE",
    "TEMPORAL_API_KEY",
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Unset every setting and work in an empty directory with no .env file."""
    for variable in VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_settings_defaults() -> None:
    settings = load_settings()

    assert settings.temporal_address == "localhost:7233"
    assert settings.temporal_namespace == "default"
    assert settings.temporal_task_queue == "ticket-communications"
    assert settings.database_url == "sqlite:///var/ticket-guard.db"
    assert settings.smtp_host == "localhost"
    assert settings.smtp_port == 1025
    assert settings.smtp_username is None
    assert settings.smtp_password is None
    assert settings.smtp_tls is None
    assert settings.smtp_timeout_seconds == 20
    assert settings.mail_from == "ticket-guard <no-reply@ticket-guard.localhost>"
    assert settings.mail_from_address == "no-reply@ticket-guard.localhost"
    assert settings.mail_domain == "ticket-guard.localhost"
    assert settings.ops_email == "ops@ticket-guard.localhost"
    assert settings.ops_address == "ops@ticket-guard.localhost"
    assert settings.default_timezone == "America/New_York"


def test_settings_read_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_PORT", "2525")
    monkeypatch.setenv("SMTP_TLS", "STARTTLS")
    monkeypatch.setenv("DEFAULT_TIMEZONE", "Europe/Berlin")
    monkeypatch.setenv("OPS_EMAIL", "Coordinators <ops@example.test>")

    settings = load_settings()

    assert settings.smtp_port == 2525
    assert settings.smtp_tls == "starttls"
    assert settings.default_timezone == "Europe/Berlin"
    assert settings.ops_address == "ops@example.test"


def test_settings_read_dotenv(
    clean_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (clean_environment / ".env").write_text(
        "SMTP_HOST=mail.example.test\nSMTP_PORT=587\nSMTP_TLS=\nSMTP_USERNAME=\n"
    )
    monkeypatch.setenv("SMTP_PORT", "2525")

    settings = load_settings()

    assert settings.smtp_host == "mail.example.test"
    # The environment wins over the .env file.
    assert settings.smtp_port == 2525
    # An empty value in .env means "not set".
    assert settings.smtp_tls is None
    assert settings.smtp_username is None


def test_settings_keyword_overrides_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SMTP_PORT", "2525")

    assert load_settings(smtp_port=1026).smtp_port == 1026


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SMTP_PORT", "smtp", "SMTP_PORT: Input should be a valid integer"),
        (
            "SMTP_PORT",
            "70000",
            "SMTP_PORT: Input should be less than or equal to 65535",
        ),
        ("SMTP_TLS", "ssl", "SMTP_TLS: Input should be 'starttls' or 'tls'"),
        (
            "SMTP_TIMEOUT_SECONDS",
            "60",
            "SMTP_TIMEOUT_SECONDS: Input should be less than 60",
        ),
        (
            "SMTP_TIMEOUT_SECONDS",
            "0",
            "SMTP_TIMEOUT_SECONDS: Input should be greater than 0",
        ),
        (
            "DEFAULT_TIMEZONE",
            "Eastern",
            "DEFAULT_TIMEZONE: Value error, not an IANA time zone",
        ),
        (
            "DEFAULT_TIMEZONE",
            "../../etc/passwd",
            "DEFAULT_TIMEZONE: Value error, not an IANA",
        ),
        (
            "MAX_HISTORY_LENGTH",
            "50",
            "MAX_HISTORY_LENGTH: Input should be greater than or equal to 100",
        ),
        ("MAIL_FROM", "ticket-guard", "MAIL_FROM: Value error, not a mail address"),
        ("OPS_EMAIL", "ops@", "OPS_EMAIL: Value error, not a mail address"),
        (
            "DATABASE_URL",
            "not a url",
            "DATABASE_URL: Value error, not a SQLAlchemy database URL",
        ),
    ],
)
def test_settings_invalid_value_names_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(SettingsError) as raised:
        load_settings()

    assert message in str(raised.value)


def test_settings_error_shows_value_of_plain_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SMTP_PORT", "smtp")

    with pytest.raises(SettingsError, match=r"\(got 'smtp'\)"):
        load_settings()


def test_settings_error_lists_every_invalid_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SMTP_PORT", "smtp")
    monkeypatch.setenv("DEFAULT_TIMEZONE", "Eastern")

    with pytest.raises(SettingsError) as raised:
        load_settings()

    lines = str(raised.value).splitlines()
    assert lines[0] == "Invalid settings:"
    assert [line.split(":")[0].strip() for line in lines[1:]] == [
        "SMTP_PORT",
        "DEFAULT_TIMEZONE",
    ]


def test_settings_password_needs_username(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_PASSWORD", "hunter2")

    with pytest.raises(SettingsError) as raised:
        load_settings()

    assert "SMTP_USERNAME and SMTP_PASSWORD must be set together" in str(raised.value)
    assert "hunter2" not in str(raised.value)


def test_settings_hide_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_USERNAME", "guard")
    monkeypatch.setenv("SMTP_PASSWORD", "hunter2")
    monkeypatch.setenv(
        "DATABASE_URL", "postgresql+psycopg://app:dbsecret@127.0.0.1/tickets"
    )

    settings = load_settings()

    assert settings.smtp_password is not None
    assert settings.smtp_password.get_secret_value() == "hunter2"
    for shown in (repr(settings), str(settings)):
        assert "hunter2" not in shown
        assert "dbsecret" not in shown
        assert "postgresql+psycopg://app:***@127.0.0.1/tickets" in shown
    # The code that connects still gets the whole URL.
    assert settings.database_url.endswith("app:dbsecret@127.0.0.1/tickets")


def test_settings_error_hides_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:dbsecret@db:notaport/x")
    monkeypatch.setenv("SMTP_PORT", "smtp")

    with pytest.raises(SettingsError) as raised:
        load_settings()

    assert "DATABASE_URL: Value error, not a SQLAlchemy database URL" in str(
        raised.value
    )
    assert "dbsecret" not in str(raised.value)


def test_policy_overrides_read_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLICY_OVERRIDES", '{"claim_within": "6h"}')
    assert load_settings().policy_overrides == {"claim_within": "6h"}


def test_bad_policy_overrides_name_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POLICY_OVERRIDES", '{"claim_within": "soon"}')
    with pytest.raises(SettingsError, match="POLICY_OVERRIDES.*invalid duration"):
        load_settings()


def test_connect_config_keeps_profile_but_not_its_address(
    monkeypatch: pytest.MonkeyPatch, clean_environment: Path
) -> None:
    profile = clean_environment / "temporal.toml"
    profile.write_text(
        "[profile.default]\n"
        'address = "profile.example:7233"\n'
        'namespace = "profile-namespace"\n'
        'api_key = "profile-key"\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(profile))
    settings = load_settings(
        temporal_address="temporal.internal:7233", temporal_namespace="tickets"
    )

    config = settings.temporal_connect_config()

    assert config["target_host"] == "temporal.internal:7233"
    assert config["namespace"] == "tickets"
    assert config.get("api_key") == "profile-key"
