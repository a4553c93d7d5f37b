"""Rich renderings of stored messages (the demo and the CLI share them)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from rich.console import Group
from rich.panel import Panel
from rich.text import Text
from rich.tree import Tree

from messaging.results import AttemptInfo, MessageState

__all__ = ["cells", "chain_tree", "dead_letter_panel", "mermaid_sequence", "printable"]

_STYLE = {"delivered": "green", "dead": "red", "retrying": "yellow", "running": "cyan"}
# C0 and C1 control characters but tab and newline: ESC starts a terminal command.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with control characters shown as ``\\xNN`` instead of sent to the terminal."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def cells(*values: object) -> list[Text]:
    """Table cells shown as they are: stored text (request paths, errors, names from
    outside) is never read as Rich markup, nor passes terminal control codes."""
    return [Text(printable("" if value is None else str(value))) for value in values]


def _attempt_line(attempt: AttemptInfo) -> Text:
    took = ""
    if attempt.started_at is not None:
        took = f" {1000 * (attempt.ended_at - attempt.started_at).total_seconds():.0f} ms"
    line = Text(
        f"attempt {attempt.number}: {attempt.outcome}{took}",
        style=_STYLE.get(attempt.outcome, "yellow"),
    )
    if attempt.error:
        line.append(f"  {printable(attempt.error)}", style="dim")
    return line


def _label(state: MessageState) -> Text:
    text = Text()
    text.append(f"{state.sender} → {state.receiver}", style="bold")
    text.append(f"  [{state.status}]", style=_STYLE.get(state.status, "white"))
    text.append(f"  {state.message_id[:8]}", style="dim")
    if state.reply is not None:
        text.append(f"  reply={json.dumps(state.reply)[:60]}")
    return text


def chain_tree(states: Sequence[MessageState]) -> Tree:
    """A correlation chain as a tree (child under parent) with every attempt."""
    root = Tree(Text(f"correlation {states[0].correlation_id if states else '?'}", style="bold"))
    nodes: dict[str, Tree] = {}
    for state in states:  # oldest first, so a parent is placed before its children
        parent = nodes.get(state.parent_id or "", root)
        node = parent.add(_label(state))
        for attempt in state.attempt_log:
            node.add(_attempt_line(attempt))
        nodes[state.message_id] = node
    return root


def dead_letter_panel(state: MessageState) -> Panel:
    """One dead letter: why it died and every attempt's error."""
    lines: list[Text] = [
        Text(f"{state.sender} → {state.receiver}  id {state.message_id}"),
        Text(f"reason: {state.dead_reason}   attempts: {state.attempts}", style="red"),
        Text(f"payload: {json.dumps(state.payload)[:200]}"),
        *(_attempt_line(a) for a in state.attempt_log),
    ]
    return Panel(Group(*lines), title="dead letter", border_style="red")


def mermaid_sequence(states: Sequence[MessageState]) -> str:
    """A correlation chain as a Mermaid sequence diagram (messages, then replies)."""

    def name(agent: str) -> str:
        return agent.replace(".", "_").replace("-", "_")

    lines = ["sequenceDiagram"]
    for agent in dict.fromkeys(a for s in states for a in (s.sender, s.receiver)):
        lines.append(f"    participant {name(agent)} as {agent}")
    for s in states:
        payload = json.dumps(s.payload)[:40].replace(";", ",")
        tries = f"{s.attempts} attempt{'s' if s.attempts != 1 else ''}"
        lines.append(f"    {name(s.sender)}->>{name(s.receiver)}: {payload} ({s.status}, {tries})")
        if s.status == "delivered" and s.reply is not None:
            reply = json.dumps(s.reply)[:40].replace(";", ",")
            lines.append(f"    {name(s.receiver)}-->>{name(s.sender)}: {reply}")
        elif s.status == "dead":
            lines.append(f"    Note over {name(s.receiver)}: dead ({s.dead_reason})")
    return "\n".join(lines)
