"""Composing the digest: readable Block Kit within Slack's limits, for 0, 1, 50 and 5,000 edges."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from aggregator.store.edge_queries import Edge
from digest.compose import (
    MAX_BLOCKS,
    MAX_HEADER_CHARS,
    MAX_MESSAGE_CHARS,
    MAX_SECTION_CHARS,
    Window,
    compose,
    escape,
)
from digest.preview import render

END = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
WINDOW = Window(END - timedelta(days=1), END, "since_last_run")
EDGE_LINE = re.compile(r"^• (?::no_entry: )?(\S+) → (\S+) · \*?(\w+)\*? · ", re.MULTILINE)


def edge(
    src: str, dst: str, action: str = "allow", *, flows: int = 3, age_hours: float = 2
) -> Edge:
    first = END - timedelta(hours=age_hours)
    return Edge(src, dst, action, first, END, flows)


def many(count: int, *, deny_every: int = 10) -> list[Edge]:
    """`count` distinct edges over 40 source namespaces, every `deny_every`-th denied."""
    return [
        edge(f"team-{i % 40:02d}", f"svc-{i:05d}", "deny" if i % deny_every == 0 else "allow")
        for i in range(count)
    ]


def sections(message: dict[str, Any]) -> list[str]:
    return [b["text"]["text"] for b in message["blocks"] if b["type"] == "section"]


def listed_edges(messages: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [
        match.groups()
        for message in messages
        for text in sections(message)
        for match in EDGE_LINE.finditer(text)
    ]


def assert_within_slack_limits(message: dict[str, Any]) -> None:
    assert len(message["blocks"]) <= MAX_BLOCKS
    assert len(json.dumps(message, ensure_ascii=False)) <= MAX_MESSAGE_CHARS
    assert message["text"]
    header = message["blocks"][0]
    assert header["type"] == "header"
    assert len(header["text"]["text"]) <= MAX_HEADER_CHARS
    for text in sections(message):
        assert 0 < len(text) <= MAX_SECTION_CHARS


def test_nothing_new_is_no_message_at_all() -> None:
    assert compose([], WINDOW).messages == []


def test_nothing_new_with_always_is_one_message_saying_so() -> None:
    (message,) = compose([], WINDOW, always=True).messages
    assert message["blocks"][0]["text"]["text"].startswith("No new edges · 2026-11-24 08:00")
    assert message["text"].startswith("No new edges since")
    assert_within_slack_limits(message)


def test_one_edge_is_one_message_with_header_window_line_and_fallback() -> None:
    composition = compose([edge("frontend", "api", flows=3120)], WINDOW)
    (message,) = composition.messages
    header, context, *_ = message["blocks"]
    assert header["text"]["text"] == "1 new edge · 2026-11-24 08:00 → 2026-11-25 08:00 UTC"
    assert "New since the last digest (2026-11-24 08:00 UTC)" in context["elements"][0]["text"]
    assert "• frontend → api · allow · 3,120 flows" in sections(message)[0]
    assert message["text"] == "1 new edge since 2026-11-24 08:00 UTC"
    assert [e.key for e in composition.listed] == [("frontend", "api", "allow")]
    assert composition.summarised == []
    assert_within_slack_limits(message)


def test_denied_edges_come_first_marked_and_counted() -> None:
    edges = [edge("a", "b"), edge("z", "dbaas", "deny", flows=1), edge("c", "d", "pass")]
    (message,) = compose(edges, WINDOW).messages
    text = "\n".join(sections(message))
    assert text.index("Denied") < text.index("z → dbaas") < text.index("a → b")
    assert "• :no_entry: z → dbaas · *deny* · 1 flow" in text
    assert "*1 denied* · 1 allow · 1 pass" in message["blocks"][1]["elements"][0]["text"]
    assert "(1 denied)" in message["text"]


def test_edges_are_grouped_by_source_namespace() -> None:
    edges = [edge("web", "api"), edge("batch", "s3"), edge("web", "cache"), edge("batch", "db")]
    (message,) = compose(edges, WINDOW).messages
    text = sections(message)[0]
    assert text.splitlines() == [
        "*New edges* (4)",
        "",
        "*batch*",
        "• batch → db · allow · 3 flows",
        "• batch → s3 · allow · 3 flows",
        "",
        "*web*",
        "• web → api · allow · 3 flows",
        "• web → cache · allow · 3 flows",
    ]


def test_namespace_names_are_escaped_for_slack() -> None:
    (message,) = compose([edge("a&b", "<!channel>"), edge("x>y", "z", "deny")], WINDOW).messages
    text = "\n".join(sections(message))
    assert "a&amp;b → &lt;!channel&gt;" in text
    assert "*x&gt;y*" in text
    assert "<" not in text and ">" not in text.replace("→", "")
    assert "<!channel>" in render(message)


def test_escape_replaces_ampersand_first() -> None:
    assert escape("&lt;") == "&amp;lt;"


def test_times_are_shown_in_utc_whatever_zone_the_database_answered_in() -> None:
    tokyo = timezone(timedelta(hours=9))
    window = Window(WINDOW.start.astimezone(tokyo), WINDOW.end.astimezone(tokyo), WINDOW.kind)
    (message,) = compose([edge("web", "api")], window).messages
    assert "2026-11-24 08:00 → 2026-11-25 08:00 UTC" in message["blocks"][0]["text"]["text"]


def test_an_edge_recorded_late_says_so() -> None:
    late = edge("web", "legacy", age_hours=24 * 5)
    (message,) = compose([late, edge("web", "api")], WINDOW).messages
    lines = sections(message)[0].splitlines()
    assert any("legacy" in line and "recorded late" in line for line in lines)
    assert not any("→ api" in line and "late" in line for line in lines)


def test_a_re_send_does_not_call_old_edges_late() -> None:
    window = Window(END - timedelta(days=30), END, "resend")
    (message,) = compose([edge("web", "legacy", age_hours=24 * 5)], window).messages
    assert "late" not in sections(message)[0]
    assert "Re-sent on request" in message["blocks"][1]["elements"][0]["text"]


def test_a_name_longer_than_kubernetes_allows_is_cut() -> None:
    (message,) = compose([edge("x" * 5000, "api")], WINDOW).messages
    assert_within_slack_limits(message)
    assert "x" * 99 + "…" in sections(message)[0]


def test_fifty_edges_fit_one_message() -> None:
    composition = compose(many(50), WINDOW)
    (message,) = composition.messages
    assert_within_slack_limits(message)
    assert len(listed_edges(composition.messages)) == 50


def test_five_thousand_edges_split_into_numbered_messages_each_edge_once() -> None:
    edges = many(5000)
    composition = compose(edges, WINDOW, max_edges=0)
    messages = composition.messages
    total = len(messages)
    assert total > 1
    for number, message in enumerate(messages, start=1):
        assert_within_slack_limits(message)
        assert message["blocks"][0]["text"]["text"].endswith(f" ({number}/{total})")
        assert message["text"].endswith(f" ({number}/{total})")
    listed = listed_edges(messages)
    assert Counter(listed) == Counter((e.src_ns, e.dst_ns, e.action) for e in edges)
    denied_positions = [i for i, (_, _, action) in enumerate(listed) if action == "deny"]
    assert denied_positions == list(range(len(denied_positions)))
    assert len(composition.listed) == 5000


def test_a_message_that_starts_mid_group_repeats_the_headings() -> None:
    messages = compose(many(5000), WINDOW, max_edges=0).messages
    for message in messages[1:]:
        lines = sections(message)[0].splitlines()
        assert re.fullmatch(
            r"(:no_entry: )?\*(Denied|Other new edges)\* \([\d,]+\) _\(continued\)_", lines[0]
        )
        first_edge = next(line for line in lines if line.startswith("•"))
        heading = [line for line in lines[: lines.index(first_edge)] if line.startswith("*team")]
        source = first_edge.split()[2] if ":no_entry:" in first_edge else first_edge.split()[1]
        assert heading[-1].startswith(f"*{source}*")


def test_past_the_cap_the_rest_is_counted_not_listed() -> None:
    composition = compose(many(5000), WINDOW, max_edges=500)
    messages = composition.messages
    for message in messages:
        assert_within_slack_limits(message)
    listed = listed_edges(messages)
    assert len(listed) == 500
    assert all(action == "deny" for _, _, action in listed[:500])  # 500 denied come first
    last = sections(messages[-1])[-1]
    assert last == "…and 4,500 more new edges not listed (4,500 allow)."
    assert len(composition.listed) == 500 and len(composition.summarised) == 4500
    assert messages[0]["blocks"][0]["text"]["text"].startswith("5,000 new edges")


@pytest.mark.parametrize("max_edges", [0, 500])
def test_each_message_carries_exactly_the_edges_it_lists_or_counts(max_edges: int) -> None:
    composition = compose(many(5000), WINDOW, max_edges=max_edges)
    assert len(composition.carried) == len(composition.messages) > 1
    for message, carried in zip(composition.messages, composition.carried, strict=True):
        shown = listed_edges([message])
        assert [e.key for e in carried if e not in composition.summarised] == shown
    counted = [e for carried in composition.carried for e in carried]
    assert Counter(e.key for e in counted) == Counter(e.key for e in many(5000))
    assert set(composition.summarised) <= set(composition.carried[-1])


def test_a_cap_above_the_count_lists_everything() -> None:
    composition = compose(many(50), WINDOW, max_edges=500)
    assert len(listed_edges(composition.messages)) == 50
    assert composition.summarised == []


@pytest.mark.parametrize("count", [0, 1, 50, 5000])
def test_every_size_is_within_slack_limits(count: int) -> None:
    for message in compose(many(count), WINDOW, always=True).messages:
        assert_within_slack_limits(message)


def test_the_preview_is_readable_text() -> None:
    (message,) = compose([edge("a&b", "c", "deny", flows=2)], WINDOW).messages
    preview = render(message)
    assert preview.startswith("# 1 new edge · 2026-11-24 08:00")
    assert "• :no_entry: a&b → c · *deny* · 2 flows" in preview
