"""The digest's settings and `--since`: validated once, one line each, the URL never echoed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from aggregator.settings import SettingsError, load_digest_settings
from digest.cli import parse_since

HOOK = "https://hooks.slack.com/services/T000/B000/s3cr3tPart"
NOW = datetime(2026, 11, 25, 8, 30, tzinfo=UTC)


def test_defaults() -> None:
    settings = load_digest_settings({"SLACK_WEBHOOK_URL": HOOK})
    assert settings.webhook_url == HOOK
    assert settings.dry_run is False
    assert settings.database_url is None
    assert settings.first_window == 24 * 3600
    assert settings.max_edges == 500
    assert settings.http_timeout == 10
    assert settings.max_retry_after == 60


def test_the_webhook_url_is_stripped_of_a_trailing_newline() -> None:
    assert load_digest_settings({"SLACK_WEBHOOK_URL": HOOK + "\n"}).webhook_url == HOOK


def test_plain_http_is_allowed_to_this_machine_only() -> None:
    local = "http://127.0.0.1:8080/services/x"
    assert load_digest_settings({"SLACK_WEBHOOK_URL": local}).webhook_url == local
    with pytest.raises(SettingsError, match="must be an https:// URL"):
        load_digest_settings({"SLACK_WEBHOOK_URL": "http://hooks.slack.com/services/s3cr3tPart"})


@pytest.mark.parametrize(
    "url",
    [
        "ftp://hooks.slack.com/services/s3cr3tPart",
        "hooks.slack.com/services/s3cr3tPart",
        "https:///services/s3cr3tPart",
        "https://hooks.slack.com/services/s3cr3tPart with space",
        "https://[::1/services/s3cr3tPart",
        "https://hooks.slack.com:abc/services/s3cr3tPart",
        "https://hooks.slack.com:99999/services/s3cr3tPart",
        "https://hooks.slack.com:-1/services/s3cr3tPart",
        "https://hooks.slack.com/services/s3cr3t\x00Part",
        "https://hooks.slack.com/services/s3cr3t\x7fPart",
    ],
)
def test_a_malformed_webhook_url_is_refused_without_showing_it(url: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_digest_settings({"SLACK_WEBHOOK_URL": url})
    assert "s3cr3tPart" not in str(caught.value)
    assert "SLACK_WEBHOOK_URL" in str(caught.value)


def test_no_webhook_without_dry_run_is_an_error_that_says_what_to_do() -> None:
    with pytest.raises(SettingsError, match=r"SLACK_WEBHOOK_URL is not set.*--dry-run"):
        load_digest_settings({})


def test_a_dry_run_needs_no_webhook() -> None:
    settings = load_digest_settings({"DRY_RUN": "1"})
    assert settings.dry_run is True
    assert settings.webhook_url is None


def test_the_settings_repr_hides_the_webhook_url() -> None:
    assert "s3cr3tPart" not in repr(load_digest_settings({"SLACK_WEBHOOK_URL": HOOK}))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"DRY_RUN": "maybe"}, "DRY_RUN must be 1 or 0"),
        ({"DIGEST_FIRST_WINDOW": "yesterday"}, "DIGEST_FIRST_WINDOW must be a duration"),
        ({"DIGEST_FIRST_WINDOW": "10s"}, "DIGEST_FIRST_WINDOW must be between"),
        ({"DIGEST_MAX_EDGES": "-1"}, "DIGEST_MAX_EDGES must be a whole number"),
        ({"DIGEST_HTTP_TIMEOUT_SECONDS": "0"}, "DIGEST_HTTP_TIMEOUT_SECONDS must be between"),
        ({"DIGEST_LOCK_WAIT_SECONDS": "never"}, "DIGEST_LOCK_WAIT_SECONDS must be a number"),
        ({"DATABASE_URL": "mysql://x@y/z"}, "DATABASE_URL must start with postgresql://"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT must be auto, json or text"),
    ],
)
def test_bad_settings_are_one_line_errors(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message) as caught:
        load_digest_settings({"SLACK_WEBHOOK_URL": HOOK, **overrides})
    assert "\n" not in str(caught.value)


def test_the_first_window_takes_a_duration() -> None:
    settings = load_digest_settings({"SLACK_WEBHOOK_URL": HOOK, "DIGEST_FIRST_WINDOW": "7d"})
    assert settings.first_window == 7 * 86400


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("24h", NOW - timedelta(hours=24)),
        ("7d", NOW - timedelta(days=7)),
        ("30m", NOW - timedelta(minutes=30)),
        ("90s", NOW - timedelta(seconds=90)),
        ("2026-11-20", datetime(2026, 11, 20, tzinfo=UTC)),
        ("2026-11-20T06:00", datetime(2026, 11, 20, 6, tzinfo=UTC)),
    ],
)
def test_since_takes_a_duration_or_a_date(spec: str, expected: datetime) -> None:
    assert parse_since(spec, now=NOW) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("yesterday", "neither a duration .* nor a date"),
        ("24", "neither a duration .* nor a date"),
        ("2026-13-01", "neither a duration .* nor a date"),
        ("2026-12-01", "is in the future"),
        ("0s", "empty duration"),
    ],
)
def test_a_bad_since_is_a_one_line_error(spec: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        parse_since(spec, now=NOW)
