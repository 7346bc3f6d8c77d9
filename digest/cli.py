"""`edges-digest`: parse the command line, run one digest, and turn every failure into one line.

The exit status tells the CronJob (and the `DigestFailing` alert) what went wrong.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from datetime import UTC, datetime

from aggregator.embedded import resolve_database_url
from aggregator.logs import configure_logging, stdout_reader_gone
from aggregator.settings import SettingsError, load_digest_settings
from aggregator.store.connection import DatabaseUrlRefused, StoreError
from aggregator.store.digest_queries import DigestBusy, DigestStore
from aggregator.timespec import parse_time_spec
from digest.run import RunOptions, run_digest
from digest.slack import SlackError, SlackRejected, SlackUnreachable, WebhookClient, scrub

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_SLACK_REJECTED = 3
EXIT_SLACK_UNREACHABLE = 4
EXIT_DATABASE = 5
EXIT_BUSY = 6

_EPILOG = f"""\
Flags override the environment variable of the same meaning (in brackets).
Each run reports every edge that no earlier run reported, once: each message's
edges are recorded as soon as Slack accepts that message.

environment only:
  SLACK_WEBHOOK_URL               the incoming webhook (a secret: never printed)
  DATABASE_URL                    libpq URL; unset = the embedded PostgreSQL
  DIGEST_HTTP_TIMEOUT_SECONDS     per request to Slack (10)
  DIGEST_MAX_RETRY_AFTER_SECONDS  longest wait Slack's 429 Retry-After may ask (60)
  DIGEST_LOCK_WAIT_SECONDS        how long to wait for an overlapping run (600)

exit status:
  {EXIT_OK}  posted; nothing new (nothing posted); or a dry run
  {EXIT_INTERNAL}  unexpected internal error
  {EXIT_USAGE}  bad command line or setting, or SLACK_WEBHOOK_URL unset without --dry-run
  {EXIT_SLACK_REJECTED}  Slack refused a message (e.g. channel_not_found, invalid_token):
     not retried; fix the webhook; the next run reports what was not posted
  {EXIT_SLACK_UNREACHABLE}  Slack unreachable (network, timeouts, 5xx, rate limited) after
     retries; the next run reports what was not posted
  {EXIT_DATABASE}  database error (including: Slack accepted but recording failed)
  {EXIT_BUSY}  another digest run held the lock longer than DIGEST_LOCK_WAIT_SECONDS
"""

# What to do about Slack's error names, for the one line a person reads at 3 a.m.
_HINTS = {
    "channel_not_found": "the webhook's channel is gone: create a new incoming webhook",
    "channel_is_archived": "the webhook's channel is archived: unarchive it or make a new webhook",
    "invalid_token": "the webhook was revoked: create a new one and update SLACK_WEBHOOK_URL",
    "no_service": "the webhook was removed or disabled: create a new one",
    "no_service_id": "the webhook URL is incomplete: check SLACK_WEBHOOK_URL",
    "no_team": "the workspace is gone: check SLACK_WEBHOOK_URL",
    "team_disabled": "the workspace is disabled: check SLACK_WEBHOOK_URL",
    "action_prohibited": "a workspace admin restricted posting to this channel",
    "posting_to_general_channel_denied": "only admins may post to this channel",
    "invalid_payload": "Slack refused the message itself: please report it with --dry-run output",
    "no_text": "Slack refused the message itself: please report it with --dry-run output",
    "too_many_attachments": "Slack refused the message itself: please report it",
}

log = logging.getLogger("digest")


def _parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, dict[str, str]]:
    parser = argparse.ArgumentParser(
        prog="edges-digest",
        description="Post the namespace edges seen for the first time to Slack, exactly once.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the messages (preview and JSON); post nothing, record nothing [DRY_RUN=1]",
    )
    parser.add_argument(
        "--since",
        metavar="SPEC",
        help="re-send the edges first seen (or reported) since SPEC: 24h, 7d, 30m, YYYY-MM-DD;"
        " progress is not touched",
    )
    parser.add_argument("--always", action="store_true", help="post even when there is nothing new")
    flags = {
        "--first-window": (
            "DIGEST_FIRST_WINDOW",
            "DURATION",
            "how far back the very first run reports (24h)",
        ),
        "--max-edges": (
            "DIGEST_MAX_EDGES",
            "N",
            "list at most N edges, count the rest (500); 0 = no cap",
        ),
        "--log-format": ("LOG_FORMAT", "FORMAT", "auto, json or text (auto: text on a terminal)"),
    }
    for flag, (variable, metavar, text) in flags.items():
        parser.add_argument(flag, dest=variable, metavar=metavar, help=f"{text} [{variable}]")
    args = parser.parse_args(argv)
    overrides = {name: value for name, value in vars(args).items() if name.isupper() and value}
    if args.dry_run:
        overrides["DRY_RUN"] = "1"
    return args, overrides


def parse_since(spec: str, *, now: datetime) -> datetime:
    """The start of a re-send window: `24h`, `7d` or a UTC date, not in the future."""
    try:
        since = parse_time_spec(spec, now)
    except ValueError as error:
        raise SettingsError(f"--since: {error}") from None
    if since > now:
        raise SettingsError(f"--since is in the future: {spec!r}")
    return since


def main(
    argv: Sequence[str] | None = None,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Run one digest; `sleep` and `clock` pace the posting (injected by tests)."""
    args, overrides = _parse_args(argv)
    try:
        settings = load_digest_settings({**os.environ, **overrides})
        since = None
        if args.since is not None:
            since = parse_since(args.since, now=datetime.now(UTC))
        configure_logging(settings.log_format)
    except SettingsError as error:
        return _fail(str(error), EXIT_USAGE)

    options = RunOptions(
        dry_run=settings.dry_run,
        always=args.always,
        since=since,
        first_window=settings.first_window,
        max_edges=settings.max_edges,
        lock_wait=settings.lock_wait,
    )
    secret = settings.webhook_url
    try:
        with ExitStack() as stack:
            poster = None
            if not settings.dry_run:
                assert settings.webhook_url is not None
                poster = stack.enter_context(
                    WebhookClient(
                        settings.webhook_url,
                        timeout=settings.http_timeout,
                        max_retry_after=settings.max_retry_after,
                        sleep=sleep,
                        clock=clock,
                    )
                )
            database_url = resolve_database_url(settings.database_url)
            store = stack.enter_context(DigestStore.open(database_url))
            store.migrate()
            run_digest(store, poster, options, out=sys.stdout)
            sys.stdout.flush()  # here, where a reader that left is caught, not at exit
    except SlackRejected as error:
        hint = _HINTS.get(error.error, "check the webhook and the channel")
        return _fail(
            f"Slack rejected the digest: {error}{_partial(error)}; {hint};"
            " not retried; the next run reports what was not posted",
            EXIT_SLACK_REJECTED,
            secret,
        )
    except SlackUnreachable as error:
        return _fail(
            f"Slack could not take the digest: {error}{_partial(error)};"
            " the next run reports what was not posted",
            EXIT_SLACK_UNREACHABLE,
            secret,
        )
    except DigestBusy as error:
        return _fail(str(error), EXIT_BUSY, secret)
    except DatabaseUrlRefused as error:
        return _fail(f"DATABASE_URL: {error}", EXIT_USAGE, secret)
    except StoreError as error:
        return _fail(f"database: {error}", EXIT_DATABASE, secret)
    except SettingsError as error:
        return _fail(str(error), EXIT_USAGE, secret)
    except BrokenPipeError:
        stdout_reader_gone()  # `edges-digest --dry-run | head`
        return EXIT_OK
    except Exception as error:
        return _fail(f"internal error: {type(error).__name__}: {error}", EXIT_INTERNAL, secret)
    return EXIT_OK


def _partial(error: SlackError) -> str:
    if error.total <= 1:
        return ""
    if error.accepted == 0:
        return f" (message 1 of {error.total})"
    return (
        f" (message {error.accepted + 1} of {error.total}; the {error.accepted} before it"
        " were posted and recorded)"
    )


def _fail(message: str, status: int, secret: str | None = None) -> int:
    """One line on stderr: no traceback, and never the webhook URL."""
    if secret:
        message = scrub(message, secret)
    line = " ".join(message.split())
    print(f"edges-digest: {line}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
