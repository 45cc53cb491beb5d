"""config.celery_app: the reliability settings and re-pointing a producer."""

from __future__ import annotations

import redis

from config.celery_app import create_app
from config.settings import Settings
from testing.redis_server import RedisServer
from webhooks.queues import QUEUE


def test_reliability_settings_are_applied() -> None:
    conf = create_app(Settings(redis_url="redis://example.invalid:6379/0")).conf

    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.result_backend is None and conf.task_ignore_result
    assert conf.task_default_queue == QUEUE == "webhooks"
    assert conf.task_soft_time_limit > 30 and conf.task_time_limit > conf.task_soft_time_limit
    visibility = conf.broker_transport_options["visibility_timeout"]
    assert visibility > conf.task_time_limit + 10


def test_separate_broker_url_is_used_for_the_broker_only() -> None:
    settings = Settings(redis_url="redis://store:6379/0", broker_url="redis://broker:6379/1")

    assert create_app(settings).conf.broker_url == "redis://broker:6379/1"


def test_task_events_are_left_to_flower_unless_asked_for() -> None:
    # Flower switches worker events on while it runs (enable_events), so by
    # default nobody pays for events nobody reads
    quiet = create_app(Settings(redis_url="redis://example.invalid:6379/0")).conf
    assert (quiet.worker_send_task_events, quiet.task_send_sent_event) == (False, False)

    loud = create_app(Settings(redis_url="redis://example.invalid:6379/0", task_events=True)).conf
    assert (loud.worker_send_task_events, loud.task_send_sent_event) == (True, True)


def _probe() -> None:
    """A task body; never run, only published."""


def test_configure_repoints_an_app_that_already_published(redis_server: RedisServer) -> None:
    # Given an app that has published to one Redis
    with RedisServer() as other:
        app = create_app(Settings(redis_url=redis_server.url))
        task = app.task(name="probe")(_probe)
        task.delay()

        # When it is configured for another Redis and publishes again
        app.configure(Settings(redis_url=other.url))
        task.delay()

        # Then the second message went to the other Redis
        client = redis.Redis.from_url(other.url)
        assert client.llen(QUEUE) == 1
        client.close()
        app.close()


def test_configure_again_with_the_same_settings_keeps_publishing(
    redis_server: RedisServer,
) -> None:
    # Given an app that has published, When it is configured again with the
    # same settings (kombu keeps one pool per broker URL for the process)
    with RedisServer() as own:
        settings = Settings(redis_url=own.url)
        app = create_app(settings)
        task = app.task(name="probe")(_probe)
        task.delay()
        app.configure(settings)

        # Then publishing still works and reaches the same Redis
        task.delay()
        client = redis.Redis.from_url(own.url)
        assert client.llen(QUEUE) == 2
        client.close()
        app.close()


def test_a_sentinel_broker_becomes_kombus_sentinel_transport() -> None:
    # Given a Sentinel group with a password and a database as the broker
    settings = Settings(
        redis_url="redis+sentinel://:p%40ss@s1:26379,s2:26380/main/3",
        redis_sentinel_password="for-sentinels",
    )

    # When the app is configured
    conf = create_app(settings).conf

    # Then kombu gets every sentinel, the master's name, the credentials and
    # the sentinels' own password with timeouts
    assert conf.broker_url == ("sentinel://:p%40ss@s1:26379/3;sentinel://:p%40ss@s2:26380/3")
    options = conf.broker_transport_options
    assert options["master_name"] == "main"
    assert options["sentinel_kwargs"] == {
        "socket_timeout": settings.redis_socket_timeout_s,
        "socket_connect_timeout": settings.redis_socket_timeout_s,
        "password": "for-sentinels",
    }
    assert options["visibility_timeout"] == settings.visibility_timeout_s


def test_a_plain_broker_gets_no_sentinel_options() -> None:
    options = create_app(Settings(redis_url="redis://r:6379/0")).conf.broker_transport_options

    assert "master_name" not in options and "sentinel_kwargs" not in options
