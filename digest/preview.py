"""What `--dry-run` prints: each message as readable text, then as the JSON that would be posted."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TextIO

from digest.compose import Payload


def unescape(text: str) -> str:
    """The inverse of compose.escape, for people reading a preview."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def render(payload: Payload) -> str:
    """A message as plain text, block by block, roughly as Slack lays it out."""
    parts = []
    for block in payload.get("blocks", []):
        kind = block.get("type")
        if kind == "header":
            parts.append(f"# {block['text']['text']}")
        elif kind == "context":
            parts.append(" ".join(unescape(element["text"]) for element in block["elements"]))
        elif kind == "section":
            parts.append(unescape(block["text"]["text"]))
        elif kind == "divider":
            parts.append("---")
    return "\n\n".join(parts)


def print_dry_run(messages: Sequence[Payload], out: TextIO, *, quiet_reason: str) -> None:
    """Every message, as a preview and as JSON; one line saying why when there is none."""
    if not messages:
        print(f"dry run: {quiet_reason}", file=out)
        return
    total = len(messages)
    noun = "message" if total == 1 else "messages"
    print(f"dry run: {total} {noun} would be posted; nothing is posted or recorded.", file=out)
    for number, payload in enumerate(messages, start=1):
        print(f"\n===== message {number}/{total}: preview =====", file=out)
        print(render(payload), file=out)
        print(f"\n===== message {number}/{total}: JSON =====", file=out)
        print(_dumps(payload), file=out)


def _dumps(payload: Any) -> str:
    return json.dumps(payload, ensure_ascii=False, indent=2)
