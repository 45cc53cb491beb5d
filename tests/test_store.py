"""webhooks.store and the Celery app against a Redis that wants a user, a password and TLS.

Real parts: ``redis-server`` with an ACL user (the default user off) and,
in the TLS case, TLS only on its port with a certificate from the tests'
CA; a real ``celery worker`` and HTTPS receiver for the delivery.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.cluster
from redis.sentinel import SentinelConnectionPool

from config import wiring
from config.celery_app import app
from config.settings import Settings
from tasks import deliver_webhook
from testing.cluster import RedisCluster
from testing.receiver import Receiver, TestCA
from testing.redis_server import RedisServer, ServerTLS, free_port
from testing.worker import WorkerProcess
from tests.support import make_event, registered, unique_path, wait_until, worker_env
from webhooks.outcomes import OutcomeStore
from webhooks.store import (
    ClusterTarget,
    SentinelTarget,
    connect,
    parse_cluster_url,
    parse_sentinel_url,
)

USER, PASSWORD = "webhooks", "Zq7-not-in-any-log"


@pytest.fixture(scope="module")
def server_tls(test_ca: TestCA, tmp_path_factory: pytest.TempPathFactory) -> ServerTLS:
    directory = tmp_path_factory.mktemp("redis-tls")
    cert = test_ca.ca.issue_cert("127.0.0.1", "localhost")
    files = ServerTLS(cert=directory / "cert.pem", key=directory / "key.pem", ca=test_ca.pem_path)
    cert.cert_chain_pems[0].write_to_path(str(files.cert))
    cert.private_key_pem.write_to_path(str(files.key))
    return files


@pytest.fixture(params=["acl", "acl+tls"])
def secured(request: pytest.FixtureRequest, server_tls: ServerTLS) -> Iterator[RedisServer]:
    """Redis with an ACL user and the default user off; over TLS in the second case."""
    tls = server_tls if request.param == "acl+tls" else None
    with RedisServer(user=USER, password=PASSWORD, tls=tls) as server:
        yield server


def test_an_event_is_delivered_through_a_redis_with_acl_and_tls(
    secured: RedisServer,
    receiver: Receiver,
    test_ca: TestCA,
    producer_settings: Settings,
) -> None:
    # Given the producer and a worker whose store and broker need the user's
    # password (and, over TLS, verify the server against the tests' CA)
    settings = producer_settings.model_copy(
        update={"redis_url": secured.url, "redis_ca_bundle": test_ca.pem_path}
    )
    store = wiring.store_client(settings)
    app.configure(settings)
    worker = WorkerProcess(
        worker_env(secured.url, test_ca, WEBHOOKS_REDIS_CA_BUNDLE=str(test_ca.pem_path)),
        name="secured",
    )
    try:
        worker.start()
        path = unique_path()
        cid, _ = registered(wiring.conversation_store(store, settings), receiver, path)

        # When an event is published
        result = deliver_webhook.delay(make_event(cid))

        # Then it is delivered and recorded, and the password is in no log line
        outcomes = OutcomeStore(store, retention_s=60)
        outcome = wait_until(lambda: outcomes.get(result.id), 30, "the delivery's outcome")
        assert (outcome.state, outcome.status) == ("delivered", 200)
        assert len(receiver.received(path)) == 1
        assert PASSWORD not in worker.output()
        assert PASSWORD not in repr(settings)
    finally:
        worker.stop()
        app.configure(producer_settings)
        store.close()


def test_a_wrong_password_is_refused(secured: RedisServer) -> None:
    client = connect(
        secured.url.replace(PASSWORD, "wrong"), socket_timeout_s=2, ca_bundle=_ca(secured)
    )
    with pytest.raises(redis.AuthenticationError):
        client.ping()
    client.close()


def test_a_tls_server_is_verified_against_the_configured_ca_only(
    server_tls: ServerTLS, test_ca: TestCA
) -> None:
    # Given a TLS-only Redis whose certificate the system's trust store does not know
    with RedisServer(user=USER, password=PASSWORD, tls=server_tls) as server:
        # Then a client without the CA refuses it, and one with the CA connects
        unverified = connect(server.url, socket_timeout_s=2)
        with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            unverified.ping()
        verified = connect(server.url, socket_timeout_s=2, ca_bundle=test_ca.pem_path)
        assert verified.ping() is True
        unverified.close()
        verified.close()


def test_a_rediss_broker_verifies_its_certificate() -> None:
    # Given a rediss:// broker
    settings = Settings(redis_url="rediss://u:p@redis.example:6380/0", redis_ca_bundle="/ca.pem")

    # When the Celery app is configured for it
    configured = type(app)("probe")
    configured.configure(settings)

    # Then kombu is told to verify the server against the configured CA
    use_ssl = configured.conf.broker_use_ssl
    assert use_ssl["ssl_ca_certs"] == str(Path("/ca.pem"))
    assert use_ssl["ssl_cert_reqs"].name == "CERT_REQUIRED"


def _ca(server: RedisServer) -> Path | None:
    return server.tls.ca if server.tls else None


# --- redis+sentinel:// URLs (no server needed) ---------------------------------


def test_a_sentinel_url_names_its_sentinels_master_db_and_credentials() -> None:
    target = parse_sentinel_url("redis+sentinel://app:p%40ss@s1:26380,s2,[::1]:26381/main/4")

    assert target == SentinelTarget(
        sentinels=(("s1", 26380), ("s2", 26379), ("::1", 26381)),
        master="main",
        db=4,
        username="app",
        password="p@ss",
    )
    assert "p@ss" not in repr(target)


def test_a_sentinel_url_defaults_to_db_0_and_no_credentials() -> None:
    target = parse_sentinel_url("redis+sentinel://s1:26379/main")

    assert (target.db, target.username, target.password) == (0, None, None)


def test_a_password_without_a_user_is_the_default_users() -> None:
    target = parse_sentinel_url("redis+sentinel://:secret@s1/main")

    assert (target.username, target.password) == (None, "secret")


def test_a_cluster_url_names_its_nodes_tls_and_credentials() -> None:
    target = parse_cluster_url("rediss+cluster://app:p%40ss@n1:7000,n2,[::1]:7002/")

    assert target == ClusterTarget(
        nodes=(("n1", 7000), ("n2", 6379), ("::1", 7002)),
        tls=True,
        username="app",
        password="p@ss",
    )
    assert "p@ss" not in repr(target)


def test_a_cluster_client_has_the_single_clients_timeouts_and_credentials(
    redis_cluster: RedisCluster,
) -> None:
    # Given the session's cluster, named by one of its nodes
    url = f"redis+cluster://127.0.0.1:{redis_cluster.nodes[0].port}/"

    # When a client is built from it
    client = connect(url, socket_timeout_s=3)

    # Then it found all three masters, and every node's connections time out
    assert isinstance(client, redis.cluster.RedisCluster)
    nodes = client.get_primaries()
    assert len(nodes) == 3
    for node in nodes:
        options = node.redis_connection.connection_pool.connection_kwargs
        assert (options["socket_timeout"], options["socket_connect_timeout"]) == (3, 3)
        assert options["decode_responses"] is True
    client.close()


def test_a_cluster_that_no_node_answers_is_an_unreachable_redis() -> None:
    # Given a URL naming a node where nothing listens
    url = f"redis+cluster://127.0.0.1:{free_port()}/"

    # When a client is built, Then it is the error every caller handles
    with pytest.raises(redis.ConnectionError, match="no node"):
        connect(url, socket_timeout_s=1)


def test_a_sentinel_client_has_timeouts_on_the_master_and_on_every_sentinel() -> None:
    # Given a Sentinel URL with the master's password and the sentinels' own
    client = connect(
        "redis+sentinel://:master-pw@s1:26379,s2:26380/main/2",
        socket_timeout_s=3,
        sentinel_password="sentinel-pw",
    )

    # Then its pool asks the sentinels for "main", and every connection, to
    # the master or to a sentinel, times out instead of hanging
    pool: Any = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "main"
    options = pool.connection_kwargs
    assert (options["socket_timeout"], options["socket_connect_timeout"]) == (3, 3)
    assert (options["db"], options["password"], options["decode_responses"]) == (
        2,
        "master-pw",
        True,
    )
    for sentinel in pool.sentinel_manager.sentinels:
        sentinel_options = sentinel.connection_pool.connection_kwargs
        assert (sentinel_options["socket_timeout"], sentinel_options["password"]) == (
            3,
            "sentinel-pw",
        )
    client.close()
