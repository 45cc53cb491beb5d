"""config.settings: typed settings from WEBHOOKS_* variables, validated at start-up."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from config.settings import Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No WEBHOOKS_* variable from the surrounding shell leaks into a test."""
    for name in list(os.environ):
        if name.upper().startswith("WEBHOOKS_"):
            monkeypatch.delenv(name)


def test_defaults_follow_the_guide_and_are_safe() -> None:
    # Given no configuration at all
    settings = Settings()

    # Then the guide's 30 s timeout and 4/8/10 schedule apply, https and public only
    assert settings.timeout_s == 30.0
    assert settings.retry_schedule == (4.0, 8.0, 10.0)
    assert settings.allow_http is False
    assert settings.allow_private_networks is False
    assert settings.ca_bundle is None
    assert settings.signing_secret is None


def test_retry_schedule_is_parsed_from_comma_separated_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the schedule as an environment variable
    monkeypatch.setenv("WEBHOOKS_RETRY_SCHEDULE", "4,8,10")

    # When settings are built
    settings = Settings()

    # Then it is a tuple of floats
    assert settings.retry_schedule == (4.0, 8.0, 10.0)
    assert all(isinstance(v, float) for v in settings.retry_schedule)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(" 0.3 , 0.6,0.9 ", (0.3, 0.6, 0.9)), ("1,2,", (1.0, 2.0)), ("5", (5.0,))],
)
def test_retry_schedule_tolerates_spaces_and_trailing_commas(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: tuple[float, ...]
) -> None:
    monkeypatch.setenv("WEBHOOKS_RETRY_SCHEDULE", raw)
    assert Settings().retry_schedule == expected


@pytest.mark.parametrize("raw", ["4,eight,10", "4;8;10", "[4, 8, 10]"])
def test_bad_retry_schedule_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    # Given a schedule that is not comma-separated numbers
    monkeypatch.setenv("WEBHOOKS_RETRY_SCHEDULE", raw)

    # When settings are built
    with pytest.raises(ValidationError) as excinfo:
        Settings()

    # Then the error names the field and shows the expected form
    message = str(excinfo.value)
    assert "retry_schedule" in message
    assert "comma-separated seconds like '4,8,10'" in message


def test_negative_countdown_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOKS_RETRY_SCHEDULE", "4,-8,10")
    with pytest.raises(ValidationError, match="finite and not negative"):
        Settings()


@pytest.mark.parametrize("raw", ["", " , ", "4,nan,10", "inf"])
def test_empty_or_non_finite_schedule_is_rejected(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("WEBHOOKS_RETRY_SCHEDULE", raw)
    with pytest.raises(ValidationError, match="retry_schedule"):
        Settings()


def test_schedule_given_as_a_sequence_in_code_is_accepted() -> None:
    assert Settings(retry_schedule=[1, 2]).retry_schedule == (1.0, 2.0)


def test_visibility_timeout_must_outlast_a_task_and_its_longest_countdown() -> None:
    # Given the default limits: 10 s connect + 30 s read + 5 s -> 45 s soft, 55 s hard,
    # plus the 10 s longest countdown = 65 s
    settings = Settings(visibility_timeout_s=66)
    assert settings.task_time_limit_s == 55.0

    # When the visibility timeout does not exceed that
    with pytest.raises(ValidationError) as excinfo:
        Settings(visibility_timeout_s=65)

    # Then the message says what it must exceed and by how much
    message = str(excinfo.value)
    assert "visibility_timeout_s (65)" in message
    assert "task time limit plus the longest retry countdown (65 s)" in message


def test_visibility_check_reads_the_environment_too(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a long schedule from the environment and a short visibility timeout
    monkeypatch.setenv("WEBHOOKS_RETRY_SCHEDULE", "4,8,600")
    monkeypatch.setenv("WEBHOOKS_VISIBILITY_TIMEOUT_S", "600")

    # Then the combination is rejected
    with pytest.raises(ValidationError, match="visibility_timeout_s"):
        Settings()


def test_time_limits_derive_from_the_timeouts() -> None:
    settings = Settings(timeout_s=2, connect_timeout_s=1, visibility_timeout_s=60)
    assert settings.soft_time_limit_s == 8.0
    assert settings.task_time_limit_s == 18.0


@pytest.mark.parametrize("name", ["WEBHOOKS_TIMEOUT_S", "WEBHOOKS_CONNECT_TIMEOUT_S"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_timeouts_must_be_positive(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.removeprefix("WEBHOOKS_").lower()):
        Settings()


def test_development_switches_are_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the development flags set
    monkeypatch.setenv("WEBHOOKS_ALLOW_HTTP", "true")
    monkeypatch.setenv("WEBHOOKS_ALLOW_PRIVATE_NETWORKS", "1")
    monkeypatch.setenv("WEBHOOKS_TIMEOUT_S", "2.5")

    # When settings are built
    settings = Settings()

    # Then they are on
    assert settings.allow_http is True
    assert settings.allow_private_networks is True
    assert settings.timeout_s == 2.5


def test_broker_defaults_to_the_redis_url() -> None:
    assert Settings(redis_url="redis://r:1/2").effective_broker_url == "redis://r:1/2"
    assert (
        Settings(redis_url="redis://r:1/2", broker_url="redis://b:3/4").effective_broker_url
        == "redis://b:3/4"
    )


def test_broker_groups_are_read_space_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given two broker groups, one a Sentinel group (whose URL has commas)
    sentinel = "redis+sentinel://:pw@s1:26379,s2:26379/brokers/0"
    monkeypatch.setenv("WEBHOOKS_BROKER_URLS", f" redis://b1:6379/0\n {sentinel} ")

    # When settings are built
    settings = Settings()

    # Then both are groups, and a worker without WEBHOOKS_BROKER_URL consumes the first
    assert settings.broker_urls == ("redis://b1:6379/0", sentinel)
    assert settings.effective_broker_url == "redis://b1:6379/0"
    assert "pw" not in repr(settings)


@pytest.mark.parametrize(
    ("urls", "error"),
    [
        (
            "redis://b1/0 http://:hunter2@b2/0",
            r"broker 2 of WEBHOOKS_BROKER_URLS \(http://\*\*\*@b2/0\)",
        ),
        ("redis://:hunter2@b1/0 redis://:hunter2@b1/0", r"\(redis://\*\*\*@b1/0\) is listed twice"),
        ("redis+sentinel://:hunter2@s1:26379", "broker 1 .*give the master's name"),
        ("b1:6379", "broker 1 .*expected a redis://"),
    ],
)
def test_a_bad_broker_group_is_named_without_its_password(urls: str, error: str) -> None:
    with pytest.raises(ValidationError, match=error) as raised:
        Settings(broker_urls=urls)
    assert "hunter2" not in str(raised.value)


def test_a_worker_must_consume_one_of_the_groups() -> None:
    # Given a worker whose broker is not among the groups publishers map to
    with pytest.raises(
        ValidationError, match=r"WEBHOOKS_BROKER_URL \(redis://\*\*\*@b3/0\) is not one"
    ):
        Settings(broker_urls="redis://b1/0 redis://b2/0", broker_url="redis://:pw@b3/0")
    # And one whose broker is
    assert Settings(broker_urls="redis://b1/0 redis://b2/0", broker_url="redis://b2/0")


def test_signing_secret_is_not_shown_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a default signing secret in the environment
    secret = "whsec_" + "A" * 43 + "="
    monkeypatch.setenv("WEBHOOKS_SIGNING_SECRET", secret)

    # When the settings are built and printed
    settings = Settings()

    # Then the value is available but never rendered
    assert settings.signing_secret is not None
    assert settings.signing_secret.get_secret_value() == secret
    assert secret not in repr(settings)
    assert secret not in str(settings)


@pytest.mark.parametrize(
    ("secret", "problem"),
    [("abc", "start with 'whsec_'"), ("whsec_not base64!", "not valid base64")],
)
def test_a_malformed_signing_secret_stops_the_start(secret: str, problem: str) -> None:
    # It is used only when an attempt is signed: found at start, not per delivery
    with pytest.raises(ValidationError, match=problem):
        Settings(signing_secret=secret)


def test_a_worker_is_not_taken_for_dead_after_fewer_than_three_missed_beats() -> None:
    with pytest.raises(ValidationError, match="at least three heartbeats"):
        Settings(worker_heartbeat_s=10, worker_dead_after_s=25)
    assert Settings(worker_heartbeat_s=10, worker_dead_after_s=30).worker_dead_after_s == 30


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.timeout_s = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("variable", "bad", "hint"),
    [
        ("WEBHOOKS_SECRETS_KEY", "hunter2-not-a-fernet-key", "not a Fernet key"),
        ("WEBHOOKS_METRICS_AUTH", "token-without-scheme", "bearer:TOKEN"),
        ("WEBHOOKS_CONSOLE_AUTH", "admin:root:hunter2", "viewer:user:password"),
    ],
)
def test_a_bad_secret_setting_is_refused_without_being_echoed(
    monkeypatch: pytest.MonkeyPatch, variable: str, bad: str, hint: str
) -> None:
    monkeypatch.setenv(variable, bad)

    with pytest.raises(ValidationError) as excinfo:
        Settings()

    assert hint in str(excinfo.value) and bad not in str(excinfo.value)


def test_secret_and_metrics_settings_default_to_plain_loopback_and_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("WEBHOOKS_SECRETS_KEY", "WEBHOOKS_METRICS_AUTH", "WEBHOOKS_METRICS_BIND"):
        monkeypatch.delenv(name, raising=False)

    settings = Settings()

    assert settings.secrets_keys == ()
    assert settings.metrics_bind == "127.0.0.1" and settings.metrics_credentials is None


def test_the_console_defaults_to_loopback_and_no_users(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given no console settings
    for name in ("WEBHOOKS_CONSOLE_AUTH", "WEBHOOKS_CONSOLE_BIND"):
        monkeypatch.delenv(name, raising=False)

    # When settings are read, and again with two users
    default = Settings()
    monkeypatch.setenv("WEBHOOKS_CONSOLE_AUTH", "viewer:ann:pw1,operator:bob:pw2")
    given = Settings()

    # Then the console has nobody (it will refuse to start) and listens on loopback
    assert default.console_users == () and default.console_bind == "127.0.0.1"
    assert [(u.role, u.name, u.may_replay) for u in given.console_users] == [
        ("viewer", "ann", False),
        ("operator", "bob", True),
    ]
    assert "pw1" not in repr(given) and "pw2" not in repr(given.console_users)


def test_a_sentinel_group_is_accepted_as_store_and_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the store and the broker as Sentinel groups
    monkeypatch.setenv("WEBHOOKS_REDIS_URL", "redis+sentinel://:pw@s1:26379,s2:26380/main/2")
    monkeypatch.setenv("WEBHOOKS_BROKER_URL", "redis+sentinel://s1,s2/queues")
    monkeypatch.setenv("WEBHOOKS_REDIS_SENTINEL_PASSWORD", "sentinel-secret")

    # When settings are built
    settings = Settings()

    # Then they are kept, and no password shows in the repr
    assert settings.redis_url.startswith("redis+sentinel://")
    assert settings.sentinel_password == "sentinel-secret"
    assert "pw" not in repr(settings) and "sentinel-secret" not in repr(settings)


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis+sentinel://:hunter2@/main", "at least one sentinel"),
        ("redis+sentinel://:hunter2@s1:26379", "master's name"),
        ("redis+sentinel://:hunter2@s1:26379/main/zero", "database must be a number"),
        ("redis+sentinel://:hunter2@s1:port/main", "bad sentinel address"),
        ("rediss+sentinel://:hunter2@s1/main", "TLS through Sentinel"),
        ("sentinel://:hunter2@s1:26379", r"redis\+sentinel://host:26379"),
    ],
)
def test_a_bad_sentinel_url_is_refused_clearly_without_its_password(
    monkeypatch: pytest.MonkeyPatch, url: str, complaint: str
) -> None:
    # Given a mistyped Sentinel URL
    monkeypatch.setenv("WEBHOOKS_REDIS_URL", url)

    # When settings are built, Then the error says what is wrong and never shows the password
    with pytest.raises(ValidationError, match=complaint) as caught:
        Settings()
    assert "hunter2" not in str(caught.value)


def test_a_cluster_is_accepted_as_the_store_with_a_broker_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WEBHOOKS_REDIS_URL", "redis+cluster://:hunter2@n1:7000,n2:7001/")
    monkeypatch.setenv("WEBHOOKS_BROKER_URL", "redis://broker:6379/0")

    settings = Settings()

    assert settings.effective_broker_url == "redis://broker:6379/0"
    assert "hunter2" not in repr(settings)


@pytest.mark.parametrize(
    ("store", "broker", "complaint"),
    [
        ("redis+cluster://:hunter2@n1:7000/", None, "needs WEBHOOKS_BROKER_URL"),
        ("redis://localhost/0", "redis+cluster://:hunter2@n1:7000/", "no Cluster transport"),
        ("redis+cluster://:hunter2@/", "redis://b/0", "at least one node"),
        ("redis+cluster://:hunter2@n1:port/", "redis://b/0", "bad node address"),
        ("redis+cluster://:hunter2@n1:7000/3", "redis://b/0", "only database 0"),
    ],
)
def test_a_cluster_where_it_cannot_serve_is_refused_clearly_without_its_password(
    monkeypatch: pytest.MonkeyPatch, store: str, broker: str | None, complaint: str
) -> None:
    monkeypatch.setenv("WEBHOOKS_REDIS_URL", store)
    if broker is not None:
        monkeypatch.setenv("WEBHOOKS_BROKER_URL", broker)

    with pytest.raises(ValidationError, match=complaint) as caught:
        Settings()
    assert "hunter2" not in str(caught.value)


def test_an_empty_sentinel_password_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOKS_REDIS_SENTINEL_PASSWORD", "")

    assert Settings().sentinel_password is None
