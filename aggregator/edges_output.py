"""How `edges` prints: tables, JSON, CSV, DOT and Mermaid graphs, NetworkPolicy YAML."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from aggregator.store.edge_queries import Allowlist, Edge, Page, Peer

# Fewer days than this and an allowlist may miss weekly jobs and rare paths.
COMPLETE_OBSERVATION: Final = timedelta(days=7)

# ---------------------------------------------------------------- rendering


def iso_time(moment: datetime) -> str:
    """`2026-06-28T08:00:00Z`: the stable form for JSON, CSV and pipes."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def human_time(moment: datetime) -> str:
    """`2026-06-28 08:00Z`: the short form for a person at a terminal."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%MZ")


def _plain(row: Edge | Peer) -> dict[str, Any]:
    fields = asdict(row)
    fields["first_seen"] = iso_time(row.first_seen)
    fields["last_seen"] = iso_time(row.last_seen)
    return fields


def render_table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: int) -> str:
    """Columns aligned with two spaces between them; the last `numeric` columns right-aligned."""
    lines = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    first_numeric = len(headers) - numeric
    out = []
    for line in lines:
        cells = [
            cell.rjust(width) if i >= first_numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out) + "\n"


def edges_table(rows: Sequence[Edge], *, human: bool) -> str:
    if not rows:
        return "no edges match\n"
    when = human_time if human else iso_time
    return render_table(
        ("SRC_NS", "DST_NS", "ACTION", "FIRST_SEEN", "LAST_SEEN", "FLOW_COUNT"),
        (
            (e.src_ns, e.dst_ns, e.action, when(e.first_seen), when(e.last_seen), str(e.flow_count))
            for e in rows
        ),
        numeric=1,
    )


def peers_table(rows: Sequence[Peer], *, human: bool) -> str:
    if not rows:
        return "no edges match\n"
    when = human_time if human else iso_time
    return render_table(
        ("PEER", "ACTION", "DIRECTION", "FIRST_SEEN", "LAST_SEEN", "FLOW_COUNT"),
        (
            (
                p.peer,
                p.action,
                p.direction,
                when(p.first_seen),
                when(p.last_seen),
                str(p.flow_count),
            )
            for p in rows
        ),
        numeric=1,
    )


def to_json(rows: Sequence[Edge | Peer]) -> str:
    return json.dumps([_plain(row) for row in rows], indent=2) + "\n"


def to_csv(rows: Sequence[Edge | Peer], headers: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(headers), lineterminator="\n")
    writer.writeheader()
    writer.writerows(_plain(row) for row in rows)
    return buffer.getvalue()


_EDGE_HEADERS: Final = ("src_ns", "dst_ns", "action", "first_seen", "last_seen", "flow_count")
_PEER_HEADERS: Final = ("peer", "action", "direction", "first_seen", "last_seen", "flow_count")

# Graph styles per verdict: deny stands out (red, dashed), allow is calm, the rest grey.
_DOT_STYLE: Final = {
    "allow": 'color="#2e7d32"',
    "deny": 'color="#c62828", fontcolor="#c62828", style=dashed',
    "pass": 'color="#757575", style=dotted',
    "unspecified": 'color="#757575", style=dotted',
}
_MERMAID_ARROW: Final = {"allow": "-->", "deny": "-.->", "pass": "-.->", "unspecified": "-.->"}
_MERMAID_COLOR: Final = {"deny": "#c62828", "pass": "#757575", "unspecified": "#757575"}


def _pen_width(flow_count: int) -> float:
    # Logarithmic, so one busy edge does not drown the rest; capped to stay legible.
    return round(min(8.0, 1.0 + math.log10(max(1, flow_count))), 1)


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(rows: Sequence[Edge]) -> str:
    """A Graphviz digraph: namespaces as nodes, one arrow per edge labelled verdict and flows."""
    lines = [
        "digraph edges {",
        "  rankdir=LR;",
        '  node [shape=box, style=rounded, fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=10];',
    ]
    for e in rows:
        style = _DOT_STYLE.get(e.action, _DOT_STYLE["unspecified"])
        label = _dot_quote(f"{e.action} {e.flow_count}")
        lines.append(
            f"  {_dot_quote(e.src_ns)} -> {_dot_quote(e.dst_ns)}"
            f" [label={label}, penwidth={_pen_width(e.flow_count)}, {style}];"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mermaid_label(text: str) -> str:
    return '"' + text.replace('"', "#quot;") + '"'


def to_mermaid(rows: Sequence[Edge]) -> str:
    """A Mermaid flowchart; node ids are generated (n0, n1...): names like `end` are keywords."""
    ids: dict[str, str] = {}
    lines = ["flowchart LR"]
    for name in sorted({e.src_ns for e in rows} | {e.dst_ns for e in rows}):
        ids[name] = f"n{len(ids)}"
        lines.append(f"    {ids[name]}[{_mermaid_label(name)}]")
    styled: dict[str, list[str]] = {}
    for index, e in enumerate(rows):
        arrow = _MERMAID_ARROW.get(e.action, "-.->")
        label = _mermaid_label(f"{e.action} {e.flow_count}")
        lines.append(f"    {ids[e.src_ns]} {arrow}|{label}| {ids[e.dst_ns]}")
        if e.action != "allow":
            color = _MERMAID_COLOR.get(e.action, _MERMAID_COLOR["unspecified"])
            styled.setdefault(color, []).append(str(index))
    for color, indexes in styled.items():
        lines.append(f"    linkStyle {','.join(indexes)} stroke:{color},color:{color}")
    return "\n".join(lines) + "\n"


def render_edges(page: Page[Edge], output: str, *, human: bool) -> str:
    rows = page.rows
    if output == "json":
        return to_json(rows)
    if output == "csv":
        return to_csv(rows, _EDGE_HEADERS)
    if output == "dot":
        return to_dot(rows)
    if output == "mermaid":
        return to_mermaid(rows)
    return edges_table(rows, human=human)


def render_peers(page: Page[Peer], output: str, *, human: bool) -> str:
    if output == "json":
        return to_json(page.rows)
    if output == "csv":
        return to_csv(page.rows, _PEER_HEADERS)
    return peers_table(page.rows, human=human)


# ---------------------------------------------------------------- allowlists and YAML


_YAML_PLAIN_KEY: Final = re.compile(r"[A-Za-z][A-Za-z0-9./_-]*")
_YAML_PLAIN_VALUE: Final = re.compile(r"[A-Za-z][A-Za-z0-9./-]*")
# YAML 1.1 (what Kubernetes' parser speaks) reads these bare words as booleans or null.
_YAML_SPECIAL_WORDS: Final = frozenset(
    ("y", "yes", "n", "no", "true", "false", "on", "off", "null")
)


def _yaml_scalar(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if _YAML_PLAIN_VALUE.fullmatch(value) and value.lower() not in _YAML_SPECIAL_WORDS:
        return value
    # A JSON string is a valid YAML double-quoted scalar: names like "123" or "yes" stay strings.
    return json.dumps(value)


def _yaml_key(key: str) -> str:
    if _YAML_PLAIN_KEY.fullmatch(key) and key.lower() not in _YAML_SPECIAL_WORDS:
        return key
    return json.dumps(key)


def to_yaml(value: Any, indent: int = 0) -> str:
    """Block-style YAML for nested dicts and lists of strings, ints and bools (block style only)."""
    return "".join(line + "\n" for line in _yaml_lines(value, indent))


def _yaml_lines(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{_yaml_key(key)}:")
                lines.extend(_yaml_lines(item, indent + 2))
            else:
                lines.append(f"{pad}{_yaml_key(key)}: {_yaml_inline(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list) and item:
                nested = _yaml_lines(item, indent + 2)
                # The first line of a nested block shares the line with its dash.
                nested[0] = f"{pad}- {nested[0][indent + 2 :]}"
                lines.extend(nested)
            else:
                lines.append(f"{pad}- {_yaml_inline(item)}")
    else:
        lines.append(pad + _yaml_inline(value))
    return lines


def _yaml_inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _yaml_scalar(value)


def _namespace_peer(name: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}


def network_policy(allowlist: Allowlist) -> dict[str, Any]:
    """The NetworkPolicy allowing the observed egress, plus DNS so name resolution keeps working."""
    rules: list[dict[str, Any]] = [
        {"to": [_namespace_peer(d.namespace)]} for d in allowlist.destinations
    ]
    dns_peer = {
        **_namespace_peer("kube-system"),
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
    }
    rules.append(
        {
            "to": [dns_peer],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        }
    )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "egress-allowlist", "namespace": allowlist.namespace},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": rules},
    }


def observation_note(allowlist: Allowlist, now: datetime) -> list[str]:
    """How long the trail has been observing, and whether that is enough to trust the list."""
    if allowlist.observing_since is None:
        return [
            "nothing observed yet: the trail is empty",
            "INCOMPLETE: fewer than 7 days observed",
        ]
    observed = now - allowlist.observing_since
    lines = [
        f"observing since {iso_time(allowlist.observing_since)} ({observed.days} days),"
        " the oldest first_seen in the trail"
    ]
    if observed < COMPLETE_OBSERVATION:
        lines.append(
            "INCOMPLETE: fewer than 7 days observed; weekly jobs and rare paths may be missing."
        )
    return lines


def network_policy_yaml(
    allowlist: Allowlist, *, now: datetime, last_seen_since: datetime | None
) -> str:
    comments = [
        f'Egress allowlist of namespace "{allowlist.namespace}", derived by `edges allowlist`'
        f" on {iso_time(now)}.",
        *observation_note(allowlist, now),
    ]
    if last_seen_since is not None:
        comments.append(f"Only destinations last seen since {iso_time(last_seen_since)}.")
    if not allowlist.destinations:
        comments.append("No allowed egress to other namespaces was observed.")
    comments += [
        "Namespace level only: each rule allows every port of the destination namespace.",
        "Traffic leaving the cluster network (internet, nodes, host-network pods such as the",
        "Kubernetes API server) is not in the trail: this policy blocks it; add ipBlock rules",
        "for what the namespace needs before applying.",
    ]
    header = "".join(f"# {line}\n" for line in comments)
    return header + to_yaml(network_policy(allowlist))


def render_allowlist(
    allowlist: Allowlist,
    output: str,
    *,
    now: datetime,
    last_seen_since: datetime | None,
    human: bool,
) -> str:
    if output == "networkpolicy":
        return network_policy_yaml(allowlist, now=now, last_seen_since=last_seen_since)
    if output == "json":
        since = allowlist.observing_since
        document = {
            "namespace": allowlist.namespace,
            "observing_since": None if since is None else iso_time(since),
            "observed_days": None if since is None else (now - since).days,
            "complete": since is not None and now - since >= COMPLETE_OBSERVATION,
            "destinations": [
                {
                    "namespace": d.namespace,
                    "first_seen": iso_time(d.first_seen),
                    "last_seen": iso_time(d.last_seen),
                    "flow_count": d.flow_count,
                }
                for d in allowlist.destinations
            ],
        }
        return json.dumps(document, indent=2) + "\n"
    if not allowlist.destinations:
        return f"no allowed egress observed from {allowlist.namespace}\n"
    when = human_time if human else iso_time
    return render_table(
        ("DST_NS", "FIRST_SEEN", "LAST_SEEN", "FLOW_COUNT"),
        (
            (d.namespace, when(d.first_seen), when(d.last_seen), str(d.flow_count))
            for d in allowlist.destinations
        ),
        numeric=1,
    )
