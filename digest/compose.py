"""Slack Block Kit messages for a digest: pure functions from new edges to webhook payloads.

Messages stay inside Slack's limits; a large digest becomes numbered messages,
and edges past the cap are counted in an "…and N more" line instead of listed.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from aggregator.store.edge_queries import Edge

Payload = dict[str, Any]
WindowKind = Literal["since_last_run", "first_run", "resend"]

MAX_BLOCKS = 50
MAX_SECTION_CHARS = 3000
MAX_HEADER_CHARS = 150
# Slack starts refusing a message's blocks around 13,000 characters; the whole
# payload (as JSON, so escapes count) stays under this.
MAX_MESSAGE_CHARS = 12_000
# Kubernetes names are at most 63 characters; anything longer came from outside
# the aggregator and is cut so that one line can never outgrow a section.
MAX_NAME_CHARS = 100
# The header, the context line and the fallback text fit in this, with room to spare.
_RESERVED_CHARS = 1_500
_BODY_CHARS = MAX_MESSAGE_CHARS - _RESERVED_CHARS
_BODY_BLOCKS = MAX_BLOCKS - 2
# A first_seen this far before the window means the edge was recorded late (a
# backfill after downtime), not merely flushed a few seconds after the last run.
_LATE_GRACE = timedelta(hours=1)


@dataclass(frozen=True)
class Window:
    """What a digest covers, for its header: database times, UTC."""

    start: datetime
    end: datetime
    kind: WindowKind


@dataclass(frozen=True)
class Composition:
    """The payloads to post, and which edges got a line of their own or only a count."""

    messages: list[Payload]
    listed: list[Edge] = field(default_factory=list)
    summarised: list[Edge] = field(default_factory=list)
    carried: list[list[Edge]] = field(default_factory=list)
    """Per message, the edges it lists or counts: what Slack's `ok` to it reports."""


def escape(text: str) -> str:
    """Slack's mrkdwn escaping: `&`, `<` and `>` would otherwise become links or mentions."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def order(edges: Sequence[Edge]) -> list[Edge]:
    """Denied edges first, then by source namespace: the order people read them in."""
    return sorted(edges, key=lambda e: (e.action != "deny", e.src_ns, e.dst_ns, e.action))


def compose(
    edges: Sequence[Edge], window: Window, *, max_edges: int = 0, always: bool = False
) -> Composition:
    """The messages for `edges`; none when there is nothing new, unless `always`.

    `max_edges` > 0 lists at most that many edges (denied ones first) and counts
    the rest in a closing "…and N more" line.
    """
    if not edges and not always:
        return Composition(messages=[])
    ordered = order(edges)
    cut = max_edges if 0 < max_edges < len(ordered) else len(ordered)
    listed, summarised = ordered[:cut], ordered[cut:]

    packer = _Packer()
    for line in _lines(listed, summarised, window):
        packer.add(line)
    bodies, carried = packer.finish() or ([[]], [[]])

    total = len(bodies)
    messages = []
    for number, body in enumerate(bodies, start=1):
        suffix = f" ({number}/{total})" if total > 1 else ""
        blocks: list[Payload] = [_header_block(_headline(ordered, window) + suffix)]
        if number == 1:
            blocks.append(_context_block(_context(ordered, window)))
        blocks.extend(body)
        messages.append({"text": _fallback(ordered, window) + suffix, "blocks": blocks})
    return Composition(messages, listed, summarised, carried)


# --- Text ----------------------------------------------------------------------------------


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def _when(instant: datetime) -> str:
    # The database hands times over in its session's zone, which need not be UTC.
    return instant.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _name(namespace: str) -> str:
    cut = namespace if len(namespace) <= MAX_NAME_CHARS else namespace[: MAX_NAME_CHARS - 1] + "…"
    return escape(cut)


def _headline(edges: Sequence[Edge], window: Window) -> str:
    count = _plural(len(edges), "new edge") if edges else "No new edges"
    return f"{count} · {_when(window.start)} → {_when(window.end)} UTC"


def _fallback(edges: Sequence[Edge], window: Window) -> str:
    denied = sum(1 for e in edges if e.action == "deny")
    count = _plural(len(edges), "new edge") if edges else "No new edges"
    denied_text = f" ({denied:,} denied)" if denied else ""
    return f"{count}{denied_text} since {_when(window.start)} UTC"


def _context(edges: Sequence[Edge], window: Window) -> str:
    start = _when(window.start)
    if window.kind == "first_run":
        what = f"First digest: edges first seen since {start} UTC (older ones are taken as known)"
    elif window.kind == "resend":
        what = f"Re-sent on request: edges first seen, or reported by a digest, since {start} UTC"
    else:
        what = f"New since the last digest ({start} UTC)"
    counts = Counter(e.action for e in edges)
    parts = [f"*{counts.pop('deny'):,} denied*"] if "deny" in counts else []
    parts += [f"{count:,} {escape(action)}" for action, count in sorted(counts.items())]
    return " · ".join([what, *parts])


def _edge_line(edge: Edge, window: Window) -> str:
    flows = _plural(edge.flow_count, "flow")
    if edge.action == "deny":
        line = f"• :no_entry: {_name(edge.src_ns)} → {_name(edge.dst_ns)} · *deny* · {flows}"
    else:
        line = f"• {_name(edge.src_ns)} → {_name(edge.dst_ns)} · {_name(edge.action)} · {flows}"
    if window.kind != "resend" and edge.first_seen < window.start - _LATE_GRACE:
        line += f" · _first seen {edge.first_seen.astimezone(UTC):%Y-%m-%d}, recorded late_"
    return line


# --- Layout --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Line:
    """One line of a section, and the headings to repeat if it opens a new message."""

    text: str
    kind: Literal["part", "group", "edge", "note"]
    repeat: tuple[str, ...] = ()
    edges: Sequence[Edge] = ()
    """The edges the line reports: its edge, or those a note counts."""


def _lines(listed: Sequence[Edge], summarised: Sequence[Edge], window: Window) -> list[_Line]:
    denied = [e for e in listed if e.action == "deny"]
    others = [e for e in listed if e.action != "deny"]
    parts = []
    if denied:
        parts.append((f":no_entry: *Denied* ({len(denied):,})", denied))
    if others:
        parts.append(
            (f"*{'Other new edges' if denied else 'New edges'}* ({len(others):,})", others)
        )

    lines = []
    for title, part_edges in parts:
        lines.append(_Line(title, "part"))
        part_again = f"{title} _(continued)_"
        source, group_again = None, ""
        for edge in part_edges:
            if edge.src_ns != source:
                source = edge.src_ns
                group = f"*{_name(source)}*"
                lines.append(_Line(group, "group", (part_again,)))
                group_again = f"*{_name(source)}* _(continued)_"
            repeat = (part_again, group_again)
            lines.append(_Line(_edge_line(edge, window), "edge", repeat, (edge,)))
    if summarised:
        counts = Counter(e.action for e in summarised)
        by_action = ", ".join(f"{n:,} {escape(a)}" for a, n in counts.most_common())
        more = f"…and {_plural(len(summarised), 'more new edge')} not listed ({by_action})."
        lines.append(_Line(more, "note", edges=summarised))
    return lines


def _json_chars(text: str) -> int:
    return len(json.dumps(text, ensure_ascii=False)) - 2


def _section_block(text: str) -> Payload:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _header_block(text: str) -> Payload:
    if len(text) > MAX_HEADER_CHARS:
        text = text[: MAX_HEADER_CHARS - 1] + "…"
    return {"type": "header", "text": {"type": "plain_text", "text": text, "emoji": True}}


def _context_block(text: str) -> Payload:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


# A section block as JSON, without its text, plus the ", " that separates blocks.
_SECTION_OVERHEAD = len(json.dumps(_section_block(""), ensure_ascii=False)) + 2


class _Packer:
    """Greedy layout of lines into sections and sections into messages, within the limits."""

    def __init__(self) -> None:
        self._bodies: list[list[Payload]] = []
        self._carried: list[list[Edge]] = []
        self._blocks: list[Payload] = []
        self._edges: list[Edge] = []  # the edges the current message reports
        self._size = 0  # JSON characters of the closed sections of the current message
        self._lines: list[str] = []
        self._chars = 0  # text characters of the open section
        self._json = 0  # JSON characters of the open section's text

    def add(self, line: _Line) -> None:
        if line.kind in ("part", "note"):
            self._close_section()
        text = f"\n{line.text}" if line.kind == "group" and self._lines else line.text
        if self._lines and self._chars + 1 + len(text) > MAX_SECTION_CHARS:
            self._close_section()
            text = line.text
        if not self._fits(text):
            self._close_section()
            self._close_message()
            for heading in line.repeat:
                self._append(heading)
            text = f"\n{line.text}" if line.kind == "group" else line.text
        self._append(text)
        self._edges.extend(line.edges)

    def finish(self) -> tuple[list[list[Payload]], list[list[Edge]]] | None:
        """Each message's blocks and the edges it reports; None when there is no line."""
        self._close_section()
        self._close_message()
        return (self._bodies, self._carried) if self._bodies else None

    def _fits(self, text: str) -> bool:
        if self._lines:
            size = self._size + _SECTION_OVERHEAD + self._json + 2 + _json_chars(text)
        else:
            size = self._size + _SECTION_OVERHEAD + _json_chars(text)
        return size <= _BODY_CHARS and len(self._blocks) + 1 <= _BODY_BLOCKS

    def _append(self, text: str) -> None:
        if self._lines:
            self._chars += 1
            self._json += 2  # "\n" is two characters in JSON
        self._lines.append(text)
        self._chars += len(text)
        self._json += _json_chars(text)

    def _close_section(self) -> None:
        if self._lines:
            self._blocks.append(_section_block("\n".join(self._lines)))
            self._size += _SECTION_OVERHEAD + self._json
        self._lines, self._chars, self._json = [], 0, 0

    def _close_message(self) -> None:
        if self._blocks:
            self._bodies.append(self._blocks)
            self._carried.append(self._edges)
        self._blocks, self._size, self._edges = [], 0, []
