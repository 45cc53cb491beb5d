"""The console in a real browser: Debian's headless Chromium, driven by Playwright.

Real parts throughout: the session's Redis and celery worker deliver to a
real HTTPS receiver; the console is served by waitress; replay publishes
through the real Celery app. Screenshots go to the test's tmp_path.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from playwright.sync_api import Browser, Page, sync_playwright
from pydantic import SecretStr

from config.settings import Settings
from config.wiring import console as console_app
from tasks import deliver_webhook
from testing.receiver import Receiver, Respond
from testing.worker import WorkerProcess
from tests.support import make_event, registered, unique_path, wait_until
from webhooks.console.server import ConsoleServer
from webhooks.conversations import ConversationStore
from webhooks.outcomes import Outcome, OutcomeStore

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCRIPT_BODY = b"<script>document.title='pwned'</script>"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} not found: install Debian's chromium package "
            "(apt-get install -y chromium; .ci/run does this). "
            "Never `playwright install`: the test uses the distribution's browser."
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def console_url(
    producer_settings: Settings, redis_client: redis.Redis, worker: WorkerProcess
) -> Iterator[str]:
    """The console over the session's Redis, served for real on a free loopback port."""
    settings = producer_settings.model_copy(
        update={"console_auth": SecretStr("operator:bob:bob-pw")}
    )
    server = ConsoleServer(console_app(settings, redis_client), "127.0.0.1", 0).start()
    yield server.url
    server.close()


@pytest.fixture
def page(browser: Browser, console_url: str) -> Iterator[Page]:
    context = browser.new_context(
        base_url=console_url,
        http_credentials={"username": "bob", "password": "bob-pw"},
        viewport={"width": 1500, "height": 900},
    )
    yield context.new_page()
    context.close()


def ended(outcomes: OutcomeStore, webhook_id: str, state: str) -> Outcome:
    """Wait for the delivery's outcome record to say ``state``."""
    return wait_until(
        lambda: (o := outcomes.get(webhook_id)) is not None and o.state == state and o,
        30,
        f"{webhook_id} {state}",
    )


def test_support_finds_a_retried_delivery_and_an_operator_replays_a_dead_one(
    page: Page,
    receiver: Receiver,
    conversations: ConversationStore,
    outcomes: OutcomeStore,
    tmp_path: Path,
) -> None:
    # Given a delivery answered 500 (with a script in its body), 500, then 200
    retried_path = unique_path()
    cid, _ = registered(conversations, receiver, retried_path)
    receiver.script(retried_path, [Respond(500, body=SCRIPT_BODY), Respond(500), Respond(200)])
    event = make_event(cid)
    retried = deliver_webhook.delay(event).id
    ended(outcomes, retried, "delivered")

    # When support searches its message id
    page.goto("/deliveries")
    page.fill("input[name=q]", event["data"]["id"])
    page.click("button[type=submit]")
    page.screenshot(path=tmp_path / "deliveries.png", full_page=True)

    # Then the three attempts are shown in order, the last delivered
    delivery = page.locator(f"section.delivery[data-webhook-id='{retried}']")
    assert delivery.locator("td.attempt").all_inner_texts() == ["1", "2", "3"]
    assert "Delivered" in delivery.locator("p.outcome").inner_text()
    # And the receiver's script is shown as text, never run
    assert "<script>document.title='pwned'</script>" in delivery.inner_text()
    assert page.title() != "pwned"
    assert page.locator("main script").count() == 0
    # And the conversation's secret is masked
    assert "whsec_" in page.locator("pre.config").inner_text()
    assert conversations.get(cid).secret not in page.content()  # type: ignore[union-attr]

    # Given another delivery that is dead-lettered, and a receiver that recovers
    dead_path = unique_path()
    dead_cid, _ = registered(conversations, receiver, dead_path)
    receiver.always(dead_path, Respond(500))
    dead = deliver_webhook.delay(make_event(dead_cid)).id
    ended(outcomes, dead, "failed")
    receiver.always(dead_path, Respond(200))

    # When an operator filters the dead letters by its endpoint and clicks replay
    page.goto(f"/dead?endpoint={receiver.url(dead_path)}")
    page.screenshot(path=tmp_path / "dead.png", full_page=True)
    page.locator(f"button.replay-one[value='{dead}']").click()

    # Then the page reports the replay, and the delivery arrives with its webhook-id
    assert dead in page.locator("#replay-result").inner_text()
    ended(outcomes, dead, "delivered")
    page.locator(f"#replay-result a:has-text('{dead}')").click()
    assert "Delivered" in page.locator(f"section[data-webhook-id='{dead}'] p.outcome").inner_text()
    page.screenshot(path=tmp_path / "replayed.png", full_page=True)

    # And the endpoints and overview pages show the receiver's endpoints
    page.goto("/endpoints")
    assert receiver.url(dead_path) in page.locator("#endpoints").inner_text()
    page.screenshot(path=tmp_path / "endpoints.png", full_page=True)
    page.goto("/")
    wait_until(
        lambda: page.reload() and receiver.url(retried_path) in page.inner_text("#stats"),
        10,
        "the overview lists the endpoint",
    )
    page.screenshot(path=tmp_path / "overview.png", full_page=True)
