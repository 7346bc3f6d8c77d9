"""The webhook client against a real HTTP server playing Slack: what is retried, what is final."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from digest.slack import SlackError, SlackRejected, SlackUnreachable, WebhookClient
from tests.slack_server import (
    SECRET_PATH,
    Answer,
    FakeTime,
    SlackServer,
    hang,
    rate_limited,
    server_error,
    slack_error,
    slack_server,
)

MESSAGE = {"text": "1 new edge", "blocks": [{"type": "section", "text": {"type": "mrkdwn"}}]}


@pytest.fixture
def slack() -> Iterator[SlackServer]:
    with slack_server() as server:
        yield server


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


def client_for(url: str, fake_time: FakeTime, **options: float) -> WebhookClient:
    return WebhookClient(
        url,
        timeout=options.pop("timeout", 5.0),
        sleep=fake_time.sleep,
        clock=fake_time.clock,
        **options,  # type: ignore[arg-type]
    )


def assert_no_secret(error: BaseException) -> None:
    assert SECRET_PATH not in str(error)
    assert "s3cr3t" not in str(error)


def test_200_ok_is_success_and_slack_gets_the_json(slack: SlackServer, fake_time: FakeTime) -> None:
    with client_for(slack.url, fake_time) as client:
        client.post(MESSAGE)
    (request,) = slack.received
    assert request.body == MESSAGE
    assert request.path == SECRET_PATH
    assert request.headers["Content-Type"].startswith("application/json")
    assert fake_time.sleeps == []


@pytest.mark.parametrize(
    ("status", "name"),
    [
        (404, "channel_not_found"),
        (410, "channel_is_archived"),
        (403, "invalid_token"),
        (404, "no_service"),
        (400, "invalid_payload"),
        (403, "action_prohibited"),
    ],
)
def test_a_4xx_is_final_and_names_slacks_error(
    slack: SlackServer, fake_time: FakeTime, status: int, name: str
) -> None:
    slack.script(slack_error(name, status))
    with client_for(slack.url, fake_time) as client, pytest.raises(SlackRejected) as caught:
        client.post(MESSAGE)
    assert caught.value.error == name
    assert caught.value.status == status
    assert str(caught.value) == f"{name} (HTTP {status})"
    assert len(slack.received) == 1
    assert fake_time.sleeps == []


def test_a_200_that_is_not_ok_is_not_taken_for_success(
    slack: SlackServer, fake_time: FakeTime
) -> None:
    slack.script(slack_error("<html>Proxy login</html>", 200))
    with client_for(slack.url, fake_time) as client, pytest.raises(SlackRejected) as caught:
        client.post(MESSAGE)
    assert "unexpected answer '<html>Proxy login</html>'" in str(caught.value)


def test_429_waits_retry_after_then_retries(slack: SlackServer, fake_time: FakeTime) -> None:
    slack.script(rate_limited("7"))
    with client_for(slack.url, fake_time) as client:
        client.post(MESSAGE)
    assert len(slack.received) == 2
    assert fake_time.sleeps == [7.0]


def test_a_retry_after_longer_than_allowed_gives_up_at_once(
    slack: SlackServer, fake_time: FakeTime
) -> None:
    slack.script(rate_limited("3600"))
    too_long = "asked to wait 3600 s, more than the 60 s"
    with (
        client_for(slack.url, fake_time, max_retry_after=60) as client,
        pytest.raises(SlackUnreachable, match=too_long),
    ):
        client.post(MESSAGE)
    assert len(slack.received) == 1
    assert fake_time.sleeps == []


def test_a_retry_after_as_long_as_allowed_is_waited_for(
    slack: SlackServer, fake_time: FakeTime
) -> None:
    slack.script(rate_limited("60"))
    with client_for(slack.url, fake_time, max_retry_after=60) as client:
        client.post(MESSAGE)
    assert fake_time.sleeps == [60.0]


def test_429_without_retry_after_backs_off(slack: SlackServer, fake_time: FakeTime) -> None:
    slack.script(rate_limited(None))
    # The limit is on what Slack asks for; a backoff of our own may be longer.
    with client_for(slack.url, fake_time, max_retry_after=0.1) as client:
        client.post(MESSAGE)
    assert len(slack.received) == 2
    assert 0.5 <= fake_time.sleeps[0] <= 1.0  # the first backoff delay, jittered


def test_endless_429_gives_up_as_unreachable(slack: SlackServer, fake_time: FakeTime) -> None:
    slack.script(then=rate_limited("2"))
    with client_for(slack.url, fake_time) as client, pytest.raises(SlackUnreachable) as caught:
        client.post(MESSAGE)
    assert "still rate limited" in str(caught.value)
    assert len(slack.received) == 6
    assert fake_time.sleeps == [2.0] * 5


def test_a_5xx_is_retried_with_backoff(slack: SlackServer, fake_time: FakeTime) -> None:
    slack.script(server_error(500), server_error(503))
    with client_for(slack.url, fake_time) as client:
        client.post(MESSAGE)
    assert len(slack.received) == 3
    assert len(fake_time.sleeps) >= 2
    assert all(sleep > 0 for sleep in fake_time.sleeps)


def test_a_lasting_5xx_gives_up_after_a_few_attempts(
    slack: SlackServer, fake_time: FakeTime
) -> None:
    slack.script(then=server_error(503))
    with client_for(slack.url, fake_time) as client, pytest.raises(SlackUnreachable) as caught:
        client.post(MESSAGE)
    assert len(slack.received) == 4
    assert "internal_error (HTTP 503), 4 attempts" in str(caught.value)
    assert_no_secret(caught.value)


def test_a_timeout_is_retried(slack: SlackServer, fake_time: FakeTime) -> None:
    slack.script(hang())
    with client_for(slack.url, fake_time, timeout=0.2) as client:
        client.post(MESSAGE)
    assert len(slack.received) == 2


def test_a_lasting_timeout_gives_up_without_the_url(
    slack: SlackServer, fake_time: FakeTime
) -> None:
    slack.script(then=hang())
    with (
        client_for(slack.url, fake_time, timeout=0.2) as client,
        pytest.raises(SlackUnreachable) as caught,
    ):
        client.post(MESSAGE)
    assert "no answer from 127.0.0.1 within 0.2 s" in str(caught.value)
    assert len(slack.received) == 4
    assert_no_secret(caught.value)


def test_a_refused_connection_gives_up_without_the_url(fake_time: FakeTime) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}{SECRET_PATH}"
    with client_for(url, fake_time) as client, pytest.raises(SlackUnreachable) as caught:
        client.post(MESSAGE)
    assert "cannot reach 127.0.0.1: ConnectError" in str(caught.value)
    assert_no_secret(caught.value)


def test_messages_are_posted_at_most_one_per_second(
    slack: SlackServer, fake_time: FakeTime
) -> None:
    with client_for(slack.url, fake_time) as client:
        for _ in range(4):
            client.post(MESSAGE)
    assert len(slack.received) == 4
    assert fake_time.sleeps == [1.0, 1.0, 1.0]


def test_retries_keep_the_pace_too(slack: SlackServer, fake_time: FakeTime) -> None:
    slack.script(server_error())
    with client_for(slack.url, fake_time) as client:
        client.post(MESSAGE)
    assert sum(fake_time.sleeps) == pytest.approx(1.0)


def test_scrub_removes_the_url_and_its_secret_path(fake_time: FakeTime) -> None:
    url = f"https://hooks.slack.com{SECRET_PATH}"
    client = client_for(url, fake_time)
    text = client.scrub(f"Invalid URL {url} (also {SECRET_PATH})")
    assert text == "Invalid URL <webhook URL> (also /<secret>)"
    client.close()


def test_an_answer_that_quotes_the_url_shows_no_piece_of_it(
    slack: SlackServer, fake_time: FakeTime
) -> None:
    # Its 80-character cut falls inside the token.
    slack.script(Answer(status=403, body=f"Denied: {slack.url}"))
    with client_for(slack.url, fake_time) as client, pytest.raises(SlackRejected) as caught:
        client.post(MESSAGE)
    assert_no_secret(caught.value)
    assert "T0TESTTEAM" not in str(caught.value)


def test_an_answer_that_is_the_token_alone_does_not_show_it(
    slack: SlackServer, fake_time: FakeTime
) -> None:
    token = SECRET_PATH.rpartition("/")[2]
    slack.script(Answer(status=403, body=token.lower()))
    url = slack.url.replace(token, token.lower())
    with client_for(url, fake_time) as client, pytest.raises(SlackRejected) as caught:
        client.post(MESSAGE)
    assert token.lower() not in str(caught.value)


def test_scrub_removes_the_token_quoted_alone(fake_time: FakeTime) -> None:
    client = client_for(f"https://hooks.slack.com{SECRET_PATH}", fake_time)
    assert client.scrub("token s3cr3tW3bh00kT0k3nXYZ refused") == "token <secret> refused"
    client.close()


def test_slack_error_is_the_base_of_both_failures() -> None:
    assert issubclass(SlackRejected, SlackError)
    assert issubclass(SlackUnreachable, SlackError)
