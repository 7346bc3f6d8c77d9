"""One digest run: pick the edges no run has reported, compose, post (or print), record.

Exactly once: a run holds the digest lock, selects edges without a
`digest_reported` row, and records each message's edges as soon as Slack has
accepted that message, so a run that fails part-way leaves the next run only
the edges it did not post.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TextIO

from aggregator.store.connection import StoreError
from aggregator.store.digest_queries import DigestStore, Selection
from digest.compose import Composition, Payload, Window, WindowKind, compose
from digest.preview import print_dry_run
from digest.slack import SlackError

log = logging.getLogger(__name__)


class Poster(Protocol):
    def post(self, payload: Payload) -> None: ...


class ProgressNotRecorded(StoreError):
    """Slack accepted a message but the database did not take the record of its edges."""


@dataclass(frozen=True)
class RunOptions:
    dry_run: bool
    always: bool
    since: datetime | None
    first_window: float
    max_edges: int
    lock_wait: float


@dataclass(frozen=True)
class RunResult:
    edges: int
    messages: int
    recorded: bool


def run_digest(
    store: DigestStore, poster: Poster | None, options: RunOptions, *, out: TextIO
) -> RunResult:
    """One run. `poster` may be None only for a dry run."""
    if options.since is not None:
        # A re-send: any edges in the window, reported or not; progress untouched.
        selection = store.edges_since(options.since)
        composition = _compose(selection, "resend", options)
        _deliver(composition, poster, options, out)
        return RunResult(len(selection.edges), len(composition.messages), recorded=False)
    if options.dry_run:
        # No lock and no baseline: what the next real run would post, changing nothing.
        selection = store.unreported(options.first_window)
        composition = _compose(selection, _kind(selection), options)
        _deliver(composition, poster, options, out)
        return RunResult(len(selection.edges), len(composition.messages), recorded=False)

    with store.exclusive(options.lock_wait):
        baselined = store.ensure_baseline(options.first_window)
        if baselined:
            log.info(
                "first digest run: edges first seen before the window are taken as known",
                extra={"baselined": baselined},
            )
        # Selected after taking the lock, so a run that finished while we waited
        # has its edges recorded and they are not selected again.
        selection = store.unreported(options.first_window)
        composition = _compose(selection, _kind(selection), options)
        run_id = uuid.uuid4()
        assert poster is not None, "posting needs a webhook client"
        _post_and_record(store, composition, poster, run_id)
        store.finish_run(selection, run_id)
    log.info(
        "digest done" if composition.messages else "no new edges; nothing posted",
        extra={
            "edges": len(selection.edges),
            "messages": len(composition.messages),
            "run_id": str(run_id),
        },
    )
    return RunResult(len(selection.edges), len(composition.messages), recorded=True)


def _kind(selection: Selection) -> WindowKind:
    return "first_run" if selection.first_run else "since_last_run"


def _compose(selection: Selection, kind: WindowKind, options: RunOptions) -> Composition:
    window = Window(selection.window_start, selection.window_end, kind)
    return compose(selection.edges, window, max_edges=options.max_edges, always=options.always)


def _post_and_record(
    store: DigestStore, composition: Composition, poster: Poster, run_id: uuid.UUID
) -> None:
    """Post each message, then record the edges it carried before posting the next."""
    summarised = set(composition.summarised)
    total = len(composition.messages)
    for number, (payload, edges) in enumerate(
        zip(composition.messages, composition.carried, strict=True), start=1
    ):
        try:
            poster.post(payload)
        except SlackError as error:
            error.accepted, error.total = number - 1, total
            raise
        try:
            store.record_reported(
                run_id,
                listed=[edge.key for edge in edges if edge not in summarised],
                summarised=[edge.key for edge in edges if edge in summarised],
            )
        except StoreError as error:
            which = "the digest" if total == 1 else f"message {number} of {total}"
            count = len(edges)
            # Not posting the rest: each message more would be one more to post again.
            raise ProgressNotRecorded(
                f"Slack accepted {which} but recording it failed, so the next run will post"
                f" its {count} edge{'' if count == 1 else 's'} again: {error}"
            ) from None


def _deliver(
    composition: Composition, poster: Poster | None, options: RunOptions, out: TextIO
) -> None:
    if options.dry_run:
        print_dry_run(
            composition.messages,
            out,
            quiet_reason="no new edges: a real run would post nothing (--always posts anyway)",
        )
        return
    assert poster is not None, "posting needs a webhook client"
    total = len(composition.messages)
    for number, payload in enumerate(composition.messages, start=1):
        try:
            poster.post(payload)
        except SlackError as error:
            error.accepted, error.total = number - 1, total
            raise
