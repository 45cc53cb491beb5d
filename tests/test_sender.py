"""webhooks.sender: one POST against a real HTTPS receiver, every outcome classified."""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from urllib3.response import HTTPResponse
from urllib3.util import connection as urllib3_connection

from testing.receiver import Drop, Hang, Raw, Receiver, Respond, TestCA, http_head
from webhooks.errors import ErrorKind, RetryableDeliveryError
from webhooks.sender import MAX_RESPONSE_BYTES, Sender, SentResponse, parse_retry_after

READ_TIMEOUT_S = 0.5

#: The resolver as :mod:`webhooks.urlpolicy` calls it (the process-wide one).
GETADDRINFO = "webhooks.urlpolicy.socket.getaddrinfo"
#: How :mod:`webhooks.transport` opens its TCP connections.
CREATE_CONNECTION = "webhooks.transport.connection.create_connection"


@pytest.fixture(scope="module")
def receiver(test_ca: TestCA) -> Iterator[Receiver]:
    """One receiver for the module; every test scripts its own path."""
    with Receiver(test_ca.server_context("localhost", "127.0.0.1")) as server:
        yield server


@pytest.fixture
def sender(make_sender: Callable[..., Sender]) -> Sender:
    return make_sender(read_timeout_s=READ_TIMEOUT_S)


@pytest.fixture
def path() -> str:
    return f"/hook/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every TCP connection the sender opens."""
    opened: list[tuple[str, int]] = []
    real = urllib3_connection.create_connection

    def spy(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        opened.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(CREATE_CONNECTION, spy)
    return opened


def post_failing(sender: Sender, url: str) -> RetryableDeliveryError:
    with pytest.raises(RetryableDeliveryError) as excinfo:
        sender.post(url, b"{}", {"Content-Type": "application/json"})
    return excinfo.value


# --- answers --------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_returns_the_status(receiver: Receiver, sender: Sender, path: str, status: int) -> None:
    # Given a receiver that accepts with some 2xx
    body = b"" if status == 204 else b'{"ok":true}'
    receiver.script(path, [Respond(status, body=body)])

    # When a body is posted
    response = sender.post(
        receiver.url(path), b'{"hello":"world"}', {"Content-Type": "application/json"}
    )

    # Then the status comes back, the answer read cleanly, and the body arrived intact
    assert isinstance(response, SentResponse)
    assert response.status == status
    assert response.body_error == ""
    assert response.duration_s >= 0
    (request,) = receiver.received(path)
    assert request.body == b'{"hello":"world"}'
    assert request.headers["content-type"] == "application/json"


def test_headers_are_sent_with_the_user_agent(
    receiver: Receiver, sender: Sender, path: str
) -> None:
    # Given signature headers for one attempt
    headers = {"webhook-id": "msg_1", "webhook-timestamp": "1", "webhook-signature": "v1,x"}

    # When posted
    sender.post(receiver.url(path), b"{}", headers)

    # Then they arrive with our User-Agent
    (request,) = receiver.received(path)
    assert request.headers["user-agent"] == "t"
    for name, value in headers.items():
        assert request.headers[name] == value


def test_500_is_retryable_with_status_and_excerpt(
    receiver: Receiver, sender: Sender, path: str
) -> None:
    # Given a receiver failing with a 500 and an explanation
    receiver.script(path, [Respond(500, body=b'{"error":"database down"}')])

    # When posted
    error = post_failing(sender, receiver.url(path))

    # Then it is a retryable 5xx carrying status and what the receiver said
    assert error.kind is ErrorKind.HTTP_5XX
    assert error.status == 500
    assert error.response_excerpt == '{"error":"database down"}'
    assert error.retry_after_s is None
    assert "500" in str(error)


@pytest.mark.parametrize("status", [503, 599])
def test_other_5xx_are_http_5xx(receiver: Receiver, sender: Sender, path: str, status: int) -> None:
    receiver.script(path, [Respond(status)])
    error = post_failing(sender, receiver.url(path))
    assert (error.kind, error.status) == (ErrorKind.HTTP_5XX, status)


@pytest.mark.parametrize("status", [400, 401, 404, 410])
def test_4xx_is_http_4xx(receiver: Receiver, sender: Sender, path: str, status: int) -> None:
    # Given a receiver answering a 4xx
    receiver.script(path, [Respond(status, body=b"not here")])

    # When posted
    error = post_failing(sender, receiver.url(path))

    # Then it is classified http_4xx (the guide retries every non-2xx)
    assert (error.kind, error.status, error.response_excerpt) == (
        ErrorKind.HTTP_4XX,
        status,
        "not here",
    )


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirect_is_http_3xx_and_not_followed(
    receiver: Receiver, sender: Sender, path: str, status: int
) -> None:
    # Given a receiver redirecting elsewhere on the same server
    target = f"{path}/elsewhere"
    receiver.script(path, [Respond(status, headers={"Location": receiver.url(target)})])

    # When posted
    error = post_failing(sender, receiver.url(path))

    # Then it fails as http_3xx naming the location, and the target was never requested
    assert (error.kind, error.status) == (ErrorKind.HTTP_3XX, status)
    assert receiver.url(target) in str(error)
    assert len(receiver.received(path)) == 1
    assert receiver.received(target) == []


def test_429_carries_retry_after_seconds(receiver: Receiver, sender: Sender, path: str) -> None:
    # Given a receiver rate-limiting with Retry-After: 7
    receiver.script(path, [Respond(429, headers={"Retry-After": "7"})])

    # When posted
    error = post_failing(sender, receiver.url(path))

    # Then the wait is parsed onto the error, classified as back-pressure
    assert (error.kind, error.status, error.retry_after_s) == (ErrorKind.RATE_LIMITED, 429, 7.0)


def test_503_carries_retry_after_date(receiver: Receiver, sender: Sender, path: str) -> None:
    # Given a Retry-After date far in the future
    when = datetime(2999, 1, 1, tzinfo=UTC)
    receiver.script(path, [Respond(503, headers={"Retry-After": format_datetime(when, True)})])

    # When posted
    error = post_failing(sender, receiver.url(path))

    # Then it is a positive number of seconds
    assert error.retry_after_s is not None
    assert error.retry_after_s > 0


def test_non_ascii_digit_retry_after_does_not_crash(
    receiver: Receiver, sender: Sender, path: str
) -> None:
    # Given a receiver sending a Latin-1 superscript digit as Retry-After
    # ("²".isdigit() is True, float("²") raises)
    receiver.script(path, [Respond(503, headers={"Retry-After": "\u00b2"})])

    # When posted
    error = post_failing(sender, receiver.url(path))

    # Then it is still an ordinary retryable 5xx, with no usable Retry-After
    assert (error.kind, error.retry_after_s) == (ErrorKind.HTTP_5XX, None)


def test_large_response_body_is_not_read_fully(
    receiver: Receiver, sender: Sender, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a receiver answering 1 MiB, and a count of the body bytes the client takes in
    size = 1024 * 1024
    receiver.script(path, [Respond(200, body=b"x" * size)])
    consumed: list[int] = []
    real_read = http.client.HTTPResponse.read1

    def counting_read(self: http.client.HTTPResponse, *args: Any, **kwargs: Any) -> bytes:
        data = real_read(self, *args, **kwargs)
        consumed.append(len(data))
        return data

    monkeypatch.setattr(http.client.HTTPResponse, "read1", counting_read)

    # When posted
    response = sender.post(receiver.url(path), b"{}", {})

    # Then the call returns, without a body error, after reading only about 64 KiB
    # (the excerpt an error would carry: test_large_error_body_gives_a_short_excerpt)
    assert response.status == 200
    assert response.body_error == ""
    assert MAX_RESPONSE_BYTES < sum(consumed) <= MAX_RESPONSE_BYTES + 8192


def test_large_error_body_gives_a_short_excerpt(
    receiver: Receiver, sender: Sender, path: str
) -> None:
    # Given a 500 with a body far larger than the read limit
    receiver.script(path, [Respond(500, body=b"e" * (MAX_RESPONSE_BYTES * 4))])

    # When posted
    error = post_failing(sender, receiver.url(path))

    # Then the excerpt is capped at 200 characters
    assert error.response_excerpt == "e" * 200


def test_binary_response_excerpt_is_decoded_safely(
    receiver: Receiver, sender: Sender, path: str
) -> None:
    # Given a 500 whose body is not UTF-8
    receiver.script(path, [Respond(500, body=b"\xff\xfe oops")])

    # When posted
    error = post_failing(sender, receiver.url(path))

    # Then the excerpt is still text
    assert error.response_excerpt.endswith(" oops")


# --- network failures -----------------------------------------------------------


def test_untrusted_certificate_is_a_tls_error(tmp_path: Path, sender: Sender, path: str) -> None:
    # Given a receiver whose certificate comes from a CA the sender does not trust
    stranger = TestCA(tmp_path)
    with Receiver(stranger.server_context("localhost", "127.0.0.1")) as untrusted:
        # When posted
        error = post_failing(sender, untrusted.url(path))

        # Then it is a retryable TLS error and nothing was delivered
        assert error.kind is ErrorKind.TLS
        assert error.status is None
        assert untrusted.received() == []


def test_dropped_connection_is_a_connection_error(
    receiver: Receiver, sender: Sender, path: str
) -> None:
    # Given a receiver that closes the connection without answering
    receiver.script(path, [Drop()])

    # When posted
    error = post_failing(sender, receiver.url(path))

    # Then it is a retryable connection error without a status
    assert error.kind is ErrorKind.CONNECTION
    assert error.status is None
    assert len(receiver.received(path)) == 1


def test_refused_connection_is_a_connection_error(sender: Sender) -> None:
    # Given a port on loopback where nothing listens
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    # When posted there
    error = post_failing(sender, f"https://127.0.0.1:{port}/hook")

    # Then it is a connection error
    assert error.kind is ErrorKind.CONNECTION


def test_silent_receiver_is_a_timeout(receiver: Receiver, sender: Sender, path: str) -> None:
    # Given a receiver that takes the request and says nothing for 5 s
    receiver.script(path, [Hang(5)])

    # When posted with a 0.5 s read timeout
    error = post_failing(sender, receiver.url(path))

    # Then it is a retryable timeout
    assert error.kind is ErrorKind.TIMEOUT
    assert error.status is None


def test_unresolvable_host_is_a_dns_error(sender: Sender, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a resolver that does not know the host
    def fail(*args: object, **kwargs: object) -> list[Any]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(GETADDRINFO, fail)

    # When posted
    error = post_failing(sender, "https://nowhere.invalid/hook")

    # Then it is a retryable DNS error
    assert error.kind is ErrorKind.DNS
    assert error.status is None


def test_errors_keep_their_cause(receiver: Receiver, sender: Sender, path: str) -> None:
    # Given a dropped connection
    receiver.script(path, [Drop()])

    # When posted
    error = post_failing(sender, receiver.url(path))

    # Then the requests exception is chained, not lost
    assert error.__cause__ is not None


# --- answers that never end: one deadline per attempt -----------------------------

#: The deadline of the ``quick`` sender: connect 0.5 s + read 0.5 s.
DEADLINE_S = 1.0
#: Longer than any attempt within the deadline may take; far shorter than
#: the trickles below would run without one.
SLACK_S = 1.0


@pytest.fixture
def quick(make_sender: Callable[..., Sender]) -> Sender:
    return make_sender(connect_timeout_s=0.5, read_timeout_s=0.5)


def timed_post(sender: Sender, url: str) -> tuple[SentResponse | RetryableDeliveryError, float]:
    started = time.monotonic()
    try:
        result: SentResponse | RetryableDeliveryError = sender.post(url, b"{}", {})
    except RetryableDeliveryError as exc:
        result = exc
    return result, time.monotonic() - started


def test_status_line_trickled_a_byte_at_a_time_times_out_at_the_deadline(
    receiver: Receiver, quick: Sender, path: str
) -> None:
    # Given a receiver that sends its status line and headers one byte every
    # 0.2 s: each read is within the 0.5 s read timeout, the whole takes 20 s
    head = http_head(200, {"X-Padding": "p" * 60}, content_length=2)
    receiver.script(path, [Raw(head + b"{}", chunk_bytes=1, interval_s=0.2)])

    # When posted
    error, took = timed_post(quick, receiver.url(path))

    # Then the attempt ends as a timeout at its deadline, not after 20 s
    assert isinstance(error, RetryableDeliveryError)
    assert error.kind is ErrorKind.TIMEOUT
    assert "deadline" in str(error)
    assert DEADLINE_S <= took < DEADLINE_S + SLACK_S


class TrickleProxy:
    """A TCP proxy that passes the server's bytes on one every 50 ms: a TLS
    handshake that makes progress, far too slowly to finish in time."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self._upstream_port))
                threading.Thread(target=self._pipe, args=(client, upstream, 0), daemon=True).start()
                threading.Thread(target=self._pipe, args=(upstream, client, 1), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket, step: int) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(step or 65536):
                sink.sendall(data)
                if step:
                    time.sleep(0.05)
        # One side hung up: hang up the other, or the receiver's accept
        # loop (it shakes hands there) waits for ever.
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()


def test_a_tls_handshake_trickled_a_byte_at_a_time_times_out_at_the_deadline(
    receiver: Receiver, quick: Sender, path: str
) -> None:
    # Given a receiver whose handshake bytes come one every 50 ms: each read
    # is within the timeouts, the whole handshake would take over a minute
    # (CPython bounds a handshake as a whole by the connect timeout)
    proxy = TrickleProxy(receiver.port)
    try:
        # When posted through it
        error, took = timed_post(quick, f"https://127.0.0.1:{proxy.port}{path}")
    finally:
        proxy.close()

    # Then the attempt ends at its deadline as a timeout
    assert isinstance(error, RetryableDeliveryError)
    assert error.kind is ErrorKind.TIMEOUT
    assert took < DEADLINE_S + SLACK_S
    assert receiver.received(path) == []


def test_a_reused_connection_is_held_to_the_deadline_too(
    receiver: Receiver, quick: Sender, path: str, connects: list[tuple[str, int]]
) -> None:
    # Given a connection left open by a first answer, and a second answer
    # trickled over that same connection
    receiver.script(path, [Respond(200), Raw(http_head(500) * 30, chunk_bytes=1, interval_s=0.2)])
    quick.post(receiver.url(path), b"{}", {})

    # When posted again
    error, took = timed_post(quick, receiver.url(path))

    # Then the second attempt, on the reused connection, also ends at the deadline
    assert len(connects) == 1
    assert isinstance(error, RetryableDeliveryError)
    assert error.kind is ErrorKind.TIMEOUT
    assert took < DEADLINE_S + SLACK_S


def test_a_200_whose_body_stalls_is_delivered_and_says_how_the_body_ended(
    receiver: Receiver, quick: Sender, path: str
) -> None:
    # Given a 200 announcing 100000 bytes that sends 5 and then nothing
    receiver.script(path, [Raw(http_head(200, content_length=100000) + b"hello", then="hang")])

    # When posted
    response, took = timed_post(quick, receiver.url(path))

    # Then the receiver's 200 stands (it accepted the event), noted as broken
    # after the 5 bytes that came
    assert isinstance(response, SentResponse)
    assert response.status == 200
    assert "body" in response.body_error
    assert "5 bytes" in response.body_error
    assert took < DEADLINE_S + SLACK_S


def test_a_200_whose_body_trickles_past_the_deadline_is_delivered(
    receiver: Receiver, quick: Sender, path: str
) -> None:
    # Given a 200 whose 100-byte body comes one byte every 0.2 s (20 s in all)
    receiver.script(
        path,
        [Raw(b"y" * 100, head=http_head(200, content_length=100), chunk_bytes=1, interval_s=0.2)],
    )

    # When posted
    response, took = timed_post(quick, receiver.url(path))

    # Then it ends at the deadline as a delivery whose body did not complete
    assert isinstance(response, SentResponse)
    assert response.status == 200
    assert "deadline" in response.body_error
    assert DEADLINE_S <= took < DEADLINE_S + SLACK_S


def test_a_200_whose_body_is_cut_is_delivered(receiver: Receiver, quick: Sender, path: str) -> None:
    # Given a 200 announcing 100000 bytes whose connection closes after 5
    receiver.script(path, [Raw(http_head(200, content_length=100000) + b"hello")])

    # When posted
    response, _ = timed_post(quick, receiver.url(path))

    # Then it is delivered, and the note names the failed read
    assert isinstance(response, SentResponse)
    assert response.status == 200
    assert "body read failed after 5 bytes" in response.body_error


def test_a_500_whose_body_is_cut_is_a_5xx_with_what_came(
    receiver: Receiver, quick: Sender, path: str
) -> None:
    receiver.script(path, [Raw(http_head(500, content_length=1000) + b"half an apology")])
    error = post_failing(quick, receiver.url(path))
    assert (error.kind, error.status, error.response_excerpt) == (
        ErrorKind.HTTP_5XX,
        500,
        "half an apology",
    )
    assert "body read failed" in str(error)


def gzip_bomb(status: int) -> Raw:
    """An answer with ``status`` and a gzip body: 50 MB of zeros in about 50 KB."""
    bomb = gzip.compress(b"\0" * 50_000_000)
    return Raw(http_head(status, {"Content-Encoding": "gzip"}, content_length=len(bomb)) + bomb)


def test_compressed_answers_are_not_asked_for_nor_decoded(
    receiver: Receiver, quick: Sender, path: str
) -> None:
    # Given a receiver that answers gzip anyway
    receiver.script(path, [gzip_bomb(202)])

    # When posted
    response, _ = timed_post(quick, receiver.url(path))

    # Then the sender asked for identity, and took the answer without decoding it
    (request,) = receiver.received(path)
    assert request.headers["accept-encoding"] == "identity"
    assert isinstance(response, SentResponse)
    assert (response.status, response.body_error) == (202, "")


def test_a_compressed_error_answer_is_shown_undecoded(
    receiver: Receiver, quick: Sender, path: str
) -> None:
    # Given a receiver that fails with a gzip body anyway
    receiver.script(path, [gzip_bomb(503)])

    # When posted
    error = post_failing(quick, receiver.url(path))

    # Then the error's excerpt names the encoding instead of showing the bytes
    assert (error.status, error.response_excerpt) == (503, "[gzip-encoded body, not decoded]")


# --- hostile receivers: bounded memory whatever urllib3 does ---------------------

#: Runs one sender in a process of its own and reports its peak RSS growth:
#: VmHWM after a warm-up POST (TLS, requests and urllib3 all loaded), then
#: after the hostile one.
_MEMORY_PROBE = """
import json, sys
from webhooks.errors import DeliveryError
from webhooks.sender import Sender

def peak_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

ca, warm_url, hostile_url = sys.argv[1:4]
sender = Sender(connect_timeout_s=2, read_timeout_s=float(sys.argv[4]), allow_private=True,
                ca_bundle=ca, user_agent="probe")
sender.post(warm_url, b"{}", {})
before = peak_kib()
try:
    response = sender.post(hostile_url, b"{}", {})
    outcome = {"status": response.status, "excerpt": response.excerpt,
               "body_error": response.body_error}
except DeliveryError as exc:
    outcome = {"kind": str(exc.kind), "status": exc.status, "error": str(exc)}
outcome["growth_kib"] = peak_kib() - before
print(json.dumps(outcome))
"""


def probe_memory(
    receiver: Receiver, test_ca: TestCA, path: str, *, read_timeout_s: float = 5.0
) -> dict[str, Any]:
    """Post once to ``path`` from a fresh process; its outcome and peak memory growth."""
    warm = f"/warm/{uuid.uuid4().hex[:8]}"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _MEMORY_PROBE,
            str(test_ca.pem_path),
            receiver.url(warm),
            receiver.url(path),
            str(read_timeout_s),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcome: dict[str, Any] = json.loads(done.stdout)
    return outcome


def gzip_of(chunks: Iterator[bytes]) -> bytes:
    """gzip ``chunks`` as they come, never holding the whole input."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    return b"".join([*(packer.compress(c) for c in chunks), packer.flush()])


MIB = 1024 * 1024
#: How much a hostile answer may grow the sender's peak memory: generous,
#: since one 64 KiB excerpt is all it should cost.
MAX_GROWTH_KIB = 50 * 1024


def test_a_double_gzip_bomb_is_not_decoded_and_memory_stays_flat(
    receiver: Receiver, test_ca: TestCA, path: str
) -> None:
    """urllib3 2.5.0 decoded "gzip, gzip" whole before the cap: 1 GiB for 980 bytes."""
    # Given a receiver answering 500 with 1 GiB of zeros gzipped twice (a few KiB)
    inner = gzip_of(b"\0" * MIB for _ in range(1024))
    bomb = gzip_of(iter([inner]))
    assert len(bomb) < 64 * 1024
    head = http_head(500, {"Content-Encoding": "gzip, gzip"}, content_length=len(bomb))
    receiver.script(path, [Raw(bomb, head=head)])

    # When a sender in its own process posts to it
    outcome = probe_memory(receiver, test_ca, path)

    # Then the attempt is an ordinary 5xx, the body undecoded, memory flat
    assert (outcome["kind"], outcome["status"]) == ("http_5xx", 500), outcome
    assert outcome["growth_kib"] < MAX_GROWTH_KIB, outcome


def test_a_300_mib_chunk_size_line_is_refused_and_memory_stays_flat(
    receiver: Receiver, test_ca: TestCA, path: str
) -> None:
    """urllib3 2.5.0 read a chunk-size line with an unbounded readline: +607 MiB."""
    # Given a receiver answering 500, chunked, whose first chunk-size line is
    # 300 MiB of hex digits (streamed, never held)
    head = http_head(500, {"Transfer-Encoding": "chunked"})
    receiver.script(path, [Raw(b"f" * MIB, head=head, repeat=300)])

    # When a sender in its own process posts to it
    outcome = probe_memory(receiver, test_ca, path)

    # Then the attempt is a 5xx whose body read failed on the line, memory flat
    assert (outcome["kind"], outcome["status"]) == ("http_5xx", 500), outcome
    assert "body read failed" in outcome["error"], outcome
    assert outcome["growth_kib"] < MAX_GROWTH_KIB, outcome


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(Respond(500, body=b"plain apology"), id="length"),
        pytest.param(
            Raw(
                b"d\r\nplain apology\r\n0\r\n\r\n",
                head=http_head(500, {"Transfer-Encoding": "chunked"}),
            ),
            id="chunked",
        ),
    ],
)
def test_bodies_are_read_without_urllib3s_body_reader(
    receiver: Receiver, sender: Sender, path: str, monkeypatch: pytest.MonkeyPatch, answer: Any
) -> None:
    """What urllib3's reader does differs by release; the sender must not depend on it."""

    # Given a urllib3 whose every body-reading method fails the test if used
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the body was read through urllib3")

    for name in ("read", "read1", "read_chunked", "stream", "_raw_read", "_fp_read"):
        monkeypatch.setattr(HTTPResponse, name, forbidden)
    receiver.script(path, [answer])

    # When posted
    error = post_failing(sender, receiver.url(path))

    # Then the excerpt was still read
    assert (error.kind, error.response_excerpt) == (ErrorKind.HTTP_5XX, "plain apology")


@pytest.mark.parametrize(
    "garbage", [b"SSH-2.0-OpenSSH_9.6\r\n", b"HTTP/1.1 abc nope\r\n\r\n", b"\x00\xff" * 40]
)
def test_an_answer_that_is_not_http_is_a_protocol_error(
    receiver: Receiver, quick: Sender, path: str, garbage: bytes
) -> None:
    receiver.script(path, [Raw(garbage)])
    error = post_failing(quick, receiver.url(path))
    assert (error.kind, error.status) == (ErrorKind.PROTOCOL, None)


# --- connection reuse -----------------------------------------------------------


def test_two_posts_reuse_one_connection(
    receiver: Receiver, sender: Sender, path: str, connects: list[tuple[str, int]]
) -> None:
    # Given a sender that has not connected yet
    # When it posts twice to the same receiver
    sender.post(receiver.url(path), b"{}", {})
    sender.post(receiver.url(path), b"{}", {})

    # Then both requests arrived over a single TCP connection
    assert len(receiver.received(path)) == 2
    assert connects == [("127.0.0.1", receiver.port)]


def test_error_answer_keeps_the_connection(
    receiver: Receiver, sender: Sender, path: str, connects: list[tuple[str, int]]
) -> None:
    # Given a first answer that is a 500 with a small body
    receiver.script(path, [Respond(500)])
    post_failing(sender, receiver.url(path))

    # When posting again
    sender.post(receiver.url(path), b"{}", {})

    # Then the connection was reused
    assert len(connects) == 1


def test_oversized_answer_costs_its_connection(
    receiver: Receiver, sender: Sender, path: str, connects: list[tuple[str, int]]
) -> None:
    # Given a first answer too large to drain
    receiver.script(path, [Respond(200, body=b"x" * (4 * MAX_RESPONSE_BYTES))])
    sender.post(receiver.url(path), b"{}", {})

    # When posting again
    sender.post(receiver.url(path), b"{}", {})

    # Then a fresh connection was opened rather than reading the rest
    assert len(connects) == 2
    assert len(receiver.received(path)) == 2


# --- parse_retry_after ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("7", 7.0), (" 120 ", 120.0), ("0", 0.0)],
)
def test_retry_after_seconds(value: str, expected: float) -> None:
    assert parse_retry_after(value) == expected


def test_retry_after_http_date_is_relative_to_now() -> None:
    # Given an HTTP date one minute after "now"
    now = datetime(2015, 10, 21, 7, 27, tzinfo=UTC).timestamp()

    # When parsed
    # Then it is 60 seconds
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 60.0


def test_retry_after_date_in_the_past_is_zero() -> None:
    now = datetime(2015, 10, 21, 8, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 0.0


@pytest.mark.parametrize(
    "value", [None, "", "soon", "-5", "1.5", "7 seconds", "\u00b2", "\u0663", "Wed, 99 Foo"]
)
def test_unusable_retry_after_is_none(value: str | None) -> None:
    assert parse_retry_after(value) is None
