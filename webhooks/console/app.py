"""The console's Flask app: basic auth with roles, the four pages, replay with CSRF.

Everything it needs arrives as plain parameters in :class:`ConsoleDeps`
(built by ``config.wiring.console``); it never reads settings. Jinja2
autoescapes every template, so a receiver's response text is shown, never run.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from flask import Flask, Response, abort, g, render_template, request

from webhooks.attempts import AttemptLog
from webhooks.console import pages
from webhooks.console.auth import User, authenticate, csrf_token
from webhooks.conversations import ConversationStore
from webhooks.deadletters import DeadLetter, DeadLetters
from webhooks.health import HealthPolicy
from webhooks.outcomes import OutcomeStore
from webhooks.store import Store

__all__ = ["ConsoleDeps", "create_app"]


@dataclass(frozen=True)
class ConsoleDeps:
    client: Store
    attempts: AttemptLog
    outcomes: OutcomeStore
    conversations: ConversationStore
    health_policy: HealthPolicy
    users: tuple[User, ...]
    #: Republishes a dead letter, as ``webhooks dead replay`` does.
    republish: Callable[[DeadLetter], None]
    #: Signs CSRF tokens; a fresh one per process unless given.
    csrf_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))


def create_app(deps: ConsoleDeps) -> Flask:
    if not deps.users:
        raise ValueError("the console needs at least one user (WEBHOOKS_CONSOLE_AUTH)")
    app = Flask(__name__, template_folder=str(Path(__file__).with_name("templates")))
    app.jinja_env.autoescape = True  # every template, whatever its file name
    app.jinja_env.filters["when"] = _when
    app.jinja_env.globals["inf"] = float("inf")
    letters = DeadLetters(deps.client)

    @app.before_request
    def _login() -> Response | None:
        user = authenticate(request.headers.get("Authorization"), deps.users)
        if user is None:
            return Response(
                "credentials required\n",
                401,
                {"WWW-Authenticate": 'Basic realm="webhooks console", charset="UTF-8"'},
            )
        g.user = user
        g.csrf = csrf_token(deps.csrf_key, user)
        return None

    @app.after_request
    def _headers(response: Response) -> Response:
        # No inline script runs, no framing, no caching of support data.
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/")
    def overview() -> str:
        return render_template("overview.html", **pages.overview(deps.client))

    @app.get("/deliveries")
    def deliveries() -> str:
        term = request.args.get("q", "").strip()
        return render_template("deliveries.html", **pages.deliveries(deps, term))

    @app.get("/dead")
    def dead() -> str:
        return render_template("dead.html", **pages.dead(letters, request.args), result=None)

    @app.post("/dead/replay")
    def replay() -> tuple[str, int]:
        user: User = g.user
        if not user.may_replay:
            abort(403, "replay needs the operator role")
        given = request.form.get("csrf", "")
        if not hmac.compare_digest(given.encode(), str(g.csrf).encode()):
            abort(403, "missing or wrong CSRF token: reload the page and try again")
        result = pages.replay(letters, request.form.getlist("webhook_id"), deps.republish)
        listing = pages.dead(letters, {})
        return render_template("dead.html", **listing, result=result), 200

    @app.get("/endpoints")
    def endpoints() -> str:
        return render_template("endpoints.html", **pages.endpoints(deps))

    return app


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"
