"""The console's app against a real Redis: sign-in, roles, CSRF, escaping, the pages' data.

Requests go through Flask's test client; the browser test
(``test_console_browser.py``) drives the same app through a real server.
"""

from __future__ import annotations

import base64
import re
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from flask.testing import FlaskClient

from config.settings import Settings
from config.wiring import conversation_store
from tests.support import make_event
from webhooks import keys
from webhooks.attempts import AttemptLog, AttemptRecord
from webhooks.console.app import ConsoleDeps, create_app
from webhooks.console.auth import parse_users
from webhooks.deadletters import DeadLetter
from webhooks.health import HealthPolicy, HealthStore
from webhooks.metrics import Metrics
from webhooks.outcomes import Outcome, OutcomeStore
from webhooks.stats import summarize

USERS = "viewer:ann:ann-pw,operator:bob:bob-pw"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


VIEWER = basic("ann", "ann-pw")
OPERATOR = basic("bob", "bob-pw")


class Published:
    """Records what a replay republishes (the browser test publishes for real)."""

    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    def __call__(self, letter: DeadLetter) -> None:
        self.letters.append(letter)


@pytest.fixture
def published() -> Published:
    return Published()


@pytest.fixture
def console(own_client: redis.Redis, published: Published) -> Iterator[FlaskClient]:
    settings = Settings(redis_url="redis://unused", allow_private_networks=True)
    deps = ConsoleDeps(
        client=own_client,
        attempts=AttemptLog(own_client, retention_s=3600),
        outcomes=OutcomeStore(own_client, retention_s=3600),
        conversations=conversation_store(own_client, settings),
        health_policy=HealthPolicy(),
        users=parse_users(USERS),
        republish=published,
    )
    with create_app(deps).test_client() as client:
        yield client


def dead_letter(client: redis.Redis, url: str = "https://127.0.0.1:9/hook") -> str:
    webhook_id = f"msg_{uuid.uuid4().hex}"
    event = make_event()
    OutcomeStore(client, retention_s=3600).failed(
        Outcome(
            webhook_id=webhook_id,
            state="failed",
            conversation_id=event["conversation_id"],
            message_id=event["data"]["id"],
            url=url,
            attempts=4,
            status=500,
            error_kind="http_5xx",
            error="HTTP 500",
        ),
        event=event,
        callback_url=None,
    )
    return webhook_id


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found, "the dead-letter page carries a CSRF token"
    return found.group(1)


def test_every_page_asks_for_credentials(console: FlaskClient) -> None:
    for path in ("/", "/deliveries", "/dead", "/endpoints"):
        # When a page is asked for without credentials, or with a wrong password
        anonymous = console.get(path)
        wrong = console.get(path, headers=basic("ann", "bob-pw"))

        # Then it is refused with a basic-auth challenge
        assert anonymous.status_code == 401, path
        assert anonymous.headers["WWW-Authenticate"].startswith("Basic")
        assert wrong.status_code == 401, path


def test_a_viewer_sees_every_page_but_cannot_replay(
    console: FlaskClient, own_client: redis.Redis, published: Published
) -> None:
    # Given a dead letter
    webhook_id = dead_letter(own_client)

    # When a viewer opens the pages and posts a replay with a valid token
    pages = [console.get(p, headers=VIEWER) for p in ("/", "/deliveries", "/dead", "/endpoints")]
    token = csrf_of(console.get("/dead", headers=VIEWER).text)
    refused = console.post(
        "/dead/replay", data={"csrf": token, "webhook_id": webhook_id}, headers=VIEWER
    )

    # Then the pages are shown, the replay is forbidden and the letter stays
    assert [p.status_code for p in pages] == [200, 200, 200, 200]
    assert webhook_id in pages[2].text
    assert "Replay needs the operator role" in pages[2].text
    assert refused.status_code == 403
    assert published.letters == []
    assert own_client.zscore("webhooks:dead", webhook_id) is not None


def test_a_replay_without_the_csrf_token_is_refused(
    console: FlaskClient, own_client: redis.Redis, published: Published
) -> None:
    # Given a dead letter and an operator
    webhook_id = dead_letter(own_client)

    # When a replay is posted without a token, and with another console's token
    missing = console.post("/dead/replay", data={"webhook_id": webhook_id}, headers=OPERATOR)
    forged = console.post(
        "/dead/replay", data={"csrf": "0" * 64, "webhook_id": webhook_id}, headers=OPERATOR
    )

    # Then both are refused and nothing is republished
    assert (missing.status_code, forged.status_code) == (403, 403)
    assert "CSRF" in missing.text
    assert published.letters == []


def test_an_operator_replays_a_selection_once(
    console: FlaskClient, own_client: redis.Redis, published: Published
) -> None:
    # Given three dead letters
    chosen = [dead_letter(own_client), dead_letter(own_client)]
    kept = dead_letter(own_client)
    token = csrf_of(console.get("/dead", headers=OPERATOR).text)

    # When an operator replays two of them, and then the same two again
    first = console.post(
        "/dead/replay", data={"csrf": token, "webhook_id": chosen}, headers=OPERATOR
    )
    again = console.post(
        "/dead/replay", data={"csrf": token, "webhook_id": chosen}, headers=OPERATOR
    )

    # Then each is republished once, the page says so, and the third is still dead
    assert first.status_code == 200
    assert sorted(d.webhook_id for d in published.letters) == sorted(chosen)
    assert "Replayed 2" in first.text
    assert "Replayed 0" in again.text
    assert "Already replayed or expired" in again.text
    assert own_client.zrange("webhooks:dead", 0, -1) == [kept]


def test_dead_letters_filter_by_endpoint_and_error_type(
    console: FlaskClient, own_client: redis.Redis
) -> None:
    # Given dead letters for two endpoints
    here = dead_letter(own_client, "https://a.example/hook")
    there = dead_letter(own_client, "https://b.example/hook")

    # When the list is filtered by one endpoint, and by an error type none has
    by_endpoint = console.get("/dead?endpoint=https://a.example/hook", headers=VIEWER).text
    by_kind = console.get("/dead?error=timeout", headers=VIEWER).text

    # Then only the matching letters are listed
    assert here in by_endpoint and there not in by_endpoint
    assert here not in by_kind and there not in by_kind


def test_a_search_shows_the_timeline_escaped_and_the_secret_masked(
    console: FlaskClient, own_client: redis.Redis
) -> None:
    # Given a conversation and two attempts, one answered with a script
    store = conversation_store(own_client, Settings(allow_private_networks=True))
    cid = str(uuid.uuid4())
    secret = store.set(cid, {"config": {"callback_url": "https://127.0.0.1:9/h"}}).secret
    log = AttemptLog(own_client, retention_s=3600)
    message_id = str(uuid.uuid4())
    for attempt, (status, body) in enumerate([(500, "<script>alert(1)</script>"), (200, "ok")]):
        log.record(
            AttemptRecord(
                webhook_id="msg_one",
                conversation_id=cid,
                message_id=message_id,
                endpoint="https://127.0.0.1:9/h",
                attempt=attempt + 1,
                started_at=time.time(),
                duration_s=0.01,
                outcome="delivered" if status == 200 else "http_5xx",
                status=status,
                error="",
                response_excerpt=body,
                queue="webhooks",
                worker="celery@test",
            )
        )

    # When support searches by the message id and by the conversation id
    by_message = console.get(f"/deliveries?q={message_id}", headers=VIEWER).text
    by_conversation = console.get(f"/deliveries?q={cid}", headers=VIEWER).text

    # Then both show the attempts in order, the script as text, the secret masked
    for page in (by_message, by_conversation):
        assert page.index("http_5xx") < page.index(">ok<")
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert "<script>" not in page
        assert secret[:10] in page and secret not in page


def test_the_overview_shows_the_stats_numbers(console: FlaskClient) -> None:
    # When nothing has been attempted, the overview still renders its table and chart
    page = console.get("/", headers=VIEWER)

    # Then it shows the window and the overall row
    assert page.status_code == 200
    assert "Last 15 minutes" in page.text
    assert "(all endpoints)" in page.text
    assert "<svg" in page.text


def test_the_overview_has_the_numbers_of_webhooks_stats(
    console: FlaskClient, own_client: redis.Redis
) -> None:
    # Given three attempts at one endpoint: a 5xx, a timeout, then a success
    metrics = Metrics(own_client)
    endpoint = "https://a.example/hook"
    metrics.observe_attempt(endpoint, result="http_5xx", duration_s=0.04, attempt=1)
    metrics.observe_attempt(endpoint, result="timeout", duration_s=2.0, attempt=2)
    metrics.observe_attempt(endpoint, result="success", duration_s=0.2, attempt=3)
    metrics.observe_delivery(endpoint, outcome="delivered")
    expected = summarize(metrics.last_minutes(15))[1]

    # When the overview is shown
    page = console.get("/", headers=VIEWER).text

    # Then the endpoint's row has the stats numbers
    row = re.search(rf"<td>{re.escape(endpoint)}</td>(.*?)</tr>", page, re.S)
    assert row, page
    cells = [re.sub(r"<[^>]+>", "", c).strip() for c in row.group(1).split("</td>")][:-1]
    assert cells == [
        "3",
        "33.3%",
        f"{expected.mean_s * 1000:.0f}",  # type: ignore[operator]
        "250",
        "2500",
        "2500",
        "2",
        "1",
        "0",
        "http_5xx 33.3%, timeout 33.3%",
    ]


def test_the_endpoints_page_shows_parked_deliveries_and_a_retry_after_hold(
    console: FlaskClient, own_client: redis.Redis
) -> None:
    # Given an endpoint with health, two parked deliveries and a hold a minute ahead
    endpoint = "https://a.example/hook"
    HealthStore(own_client, HealthPolicy()).observe(endpoint, duration_s=0.1, outcome="delivered")
    ek = keys.endpoint(endpoint)
    own_client.zadd(ek.parked, {"msg_1": 1, "msg_2": 2})
    hold_until = time.time() + 60
    own_client.set(ek.hold, int(hold_until * 1000))

    # When the endpoints page is shown
    page = console.get("/endpoints", headers=VIEWER).text

    # Then its row has the parked count and the hold's end
    row = re.search(rf"<td>{re.escape(endpoint)}</td>(.*?)</tr>", page, re.S)
    assert row, page
    assert '<td class="num">2</td>' in row.group(1)
    assert time.strftime("%H:%M:%S", time.gmtime(hold_until)) in row.group(1)


def test_dead_letters_filter_by_time(console: FlaskClient, own_client: redis.Redis) -> None:
    # Given a dead letter from now
    webhook_id = dead_letter(own_client)

    # When the list is asked for letters since an hour ago, since tomorrow, and a bad time
    recent = console.get(f"/dead?since={time.time() - 3600}", headers=VIEWER).text
    future = console.get(f"/dead?since={time.time() + 86400}", headers=VIEWER).text
    bad = console.get("/dead?since=yesterday", headers=VIEWER).text

    # Then only the first lists it, and the bad time is named
    assert webhook_id in recent and webhook_id not in future
    assert "is not an ISO 8601 time" in bad
