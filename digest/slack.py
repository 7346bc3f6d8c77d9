"""Posting to a Slack incoming webhook: Slack's answers, retries, pacing, and a URL kept secret.

200 `ok` is success; 429 waits Retry-After (or fails, if that is too long); 5xx and network
errors are retried with backoff; any other answer is final. Errors never carry the webhook URL.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx

from aggregator.backoff import Backoff
from digest.compose import Payload

log = logging.getLogger(__name__)

_ERROR_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
# Slack's tokens are 24 characters; a shorter last path part (a test's) is scrubbed from 8 on,
# and one shorter than that is too common a string to hunt for.
_MIN_TOKEN_CHARS = 8


class SlackError(Exception):
    """Slack did not accept a message. `error` is Slack's error name or a short description.

    `accepted` and `total` say how far the run got: messages before this one
    were accepted (and their edges recorded).
    """

    def __init__(self, error: str, *, status: int | None = None) -> None:
        super().__init__(error if status is None else f"{error} (HTTP {status})")
        self.error = error
        self.status = status
        self.accepted = 0
        self.total = 1


class SlackRejected(SlackError):
    """Slack refused the message (a 4xx other than 429): retrying cannot help."""


class SlackUnreachable(SlackError):
    """Network errors, timeouts, 5xx or rate limiting outlasted the retries."""


class WebhookClient:
    """Posts payloads to one webhook, at most one request per `min_interval` seconds.

    `sleep` and `clock` are injectable so that tests of pacing and retries take
    no time; `clock` must be monotonic and advance when `sleep` is called.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        max_retry_after: float = 60.0,
        attempts: int = 4,
        rate_limit_retries: int = 5,
        min_interval: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        backoff: Callable[[], Backoff] | None = None,
    ) -> None:
        self._url = url
        self._host = urlsplit(url).hostname or "Slack"
        self._timeout = timeout
        self._max_retry_after = max_retry_after
        self._attempts = attempts
        self._rate_limit_retries = rate_limit_retries
        self._min_interval = min_interval
        self._sleep = sleep
        self._clock = clock
        self._backoff = backoff or (lambda: Backoff(initial=1.0, maximum=15.0))
        self._last_request: float | None = None
        self._http = httpx.Client(
            timeout=timeout,
            follow_redirects=False,
            headers={"Content-Type": "application/json; charset=utf-8"},
        )

    def close(self) -> None:
        self._http.close()

    def post(self, payload: Payload) -> None:
        """Post one message; returns when Slack answered `ok`, raises SlackError otherwise."""
        body = json.dumps(payload, ensure_ascii=False).encode()
        backoff = self._backoff()
        failures = rate_limited = 0
        while True:
            self._pace()
            try:
                response = self._http.post(self._url, content=body)
            except httpx.TimeoutException:
                problem = f"no answer from {self._host} within {self._timeout:g} s"
            except httpx.TransportError as error:
                problem = f"cannot reach {self._host}: {self._describe(error)}"
            else:
                status = response.status_code
                text = response.text
                if status == 200 and text.strip() == "ok":
                    return
                if status == 429:
                    rate_limited += 1
                    if rate_limited > self._rate_limit_retries:
                        raise SlackUnreachable(
                            f"still rate limited after {self._rate_limit_retries} waits",
                            status=429,
                        )
                    asked = _retry_after(response)
                    if asked is not None and asked > self._max_retry_after:
                        # Asking again sooner than Slack said is what the 429 was about.
                        raise SlackUnreachable(
                            f"rate limited: Slack asked to wait {asked:g} s, more than the"
                            f" {self._max_retry_after:g} s allowed"
                            " (DIGEST_MAX_RETRY_AFTER_SECONDS)",
                            status=429,
                        )
                    delay = backoff.next_delay() if asked is None else asked
                    log.warning("Slack rate limited the digest; waiting", extra={"wait": delay})
                    self._sleep(delay)
                    continue
                if status < 500:
                    raise SlackRejected(self._error_name(text, status), status=status)
                problem = f"{self._host} answered {self._error_name(text, status)} (HTTP {status})"
            failures += 1
            if failures >= self._attempts:
                raise SlackUnreachable(f"{problem}, {failures} attempts")
            delay = backoff.next_delay()
            log.warning(
                "Slack did not accept the message; retrying",
                extra={"problem": problem, "wait": round(delay, 2)},
            )
            self._sleep(delay)

    def _pace(self) -> None:
        # Slack allows about one message per second per webhook; retries count too.
        if self._last_request is not None:
            wait = self._last_request + self._min_interval - self._clock()
            if wait > 0:
                self._sleep(wait)
        self._last_request = self._clock()

    def _error_name(self, text: str, status: int) -> str:
        """Slack's error name from the body; anything else (a proxy's page) shortened."""
        # Scrubbed first: a body may echo the token, and a cut could leave a piece of the URL
        # that is no longer recognised.
        first = self.scrub(text.strip().splitlines()[0].strip()) if text.strip() else ""
        if _ERROR_NAME.fullmatch(first):
            return first
        if not first:
            return f"an empty answer to HTTP {status}"
        return f"an unexpected answer {first[:80]!r}"

    def _describe(self, error: httpx.TransportError) -> str:
        # httpx puts the URL into some messages; ours must never carry it.
        text = str(error).strip().splitlines()
        detail = self.scrub(text[0]) if text else ""
        return f"{type(error).__name__}: {detail}" if detail else type(error).__name__

    def scrub(self, text: str) -> str:
        """`text` without the webhook URL or any part of it that is secret."""
        return scrub(text, self._url)

    def __enter__(self) -> WebhookClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _retry_after(response: httpx.Response) -> float | None:
    """The seconds a 429's Retry-After asks for; None when absent or an HTTP date."""
    try:
        seconds = float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return seconds if 0 <= seconds < float("inf") else None


def scrub(text: str, url: str) -> str:
    """`text` without the webhook `url`, its path or its token (the path's last part)."""
    path = urlsplit(url).path
    token = path.rstrip("/").rpartition("/")[2]
    text = text.replace(url, "<webhook URL>")
    if len(path) > 1:
        text = text.replace(path, "/<secret>")
    # A page that quotes the token alone (an URL-encoded path, say) must not show it either.
    return text.replace(token, "<secret>") if len(token) >= _MIN_TOKEN_CHARS else text
