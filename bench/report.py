"""Result rows and their three renderings: a rich table, JSON, and Markdown for docs/."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

START_MARK = "<!-- bench:results:start -->"
END_MARK = "<!-- bench:results:end -->"


@dataclass
class Row:
    """One measured case: its figures, its loss check, and the goal it is judged against."""

    scenario: str
    case: str
    figures: dict[str, Any] = field(default_factory=dict)
    lost: int | None = None
    duplicates: int | None = None
    goal: str = ""
    met: bool | None = None
    note: str = ""
    key: str = ""  # the --scenario name that produced the row
    measured_at: str = ""  # UTC, so rows kept from an earlier run say when they were taken


def _figure(name: str, value: Any) -> str:
    if isinstance(value, float):
        value = f"{value:,.3f}" if abs(value) < 10 else f"{value:,.0f}"
    elif isinstance(value, int):
        value = f"{value:,}"
    return f"{name} {value}"


def figures_text(row: Row, separator: str = ", ") -> str:
    return separator.join(_figure(k, v) for k, v in row.figures.items())


def verdict(row: Row) -> str:
    if row.met is None:
        return ""
    return f"{'met' if row.met else 'MISSED'}: {row.goal}"


def loss_text(row: Row) -> str:
    if row.lost is None:
        return "n/a"
    return f"{row.lost}/{row.duplicates}"


def print_table(rows: list[Row], console: Console | None = None) -> None:
    table = Table(title="taskcast benchmarks", show_lines=True)
    for column in ("Scenario", "Case", "Figures", "Lost/dup", "Goal", "Note"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row.scenario, row.case, figures_text(row, "\n"), loss_text(row), verdict(row), row.note
        )
    (console or Console()).print(table)


def load_rows(path: Path) -> list[Row]:
    """The rows of an earlier results file (none if it is missing or unreadable)."""
    try:
        return [Row(**row) for row in json.loads(path.read_text())["results"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def merge_rows(new: list[Row], old: list[Row], order: list[str]) -> list[Row]:
    """``new`` plus the ``old`` rows of scenarios that did not run now, in ``order``."""
    ran = {row.key for row in new}
    kept = [row for row in old if row.key not in ran and row.key in order]
    return sorted(kept + new, key=lambda row: order.index(row.key))


def to_json(rows: list[Row], machine: dict[str, Any], options: dict[str, Any]) -> str:
    return json.dumps(
        {"machine": machine, "options": options, "results": [asdict(r) for r in rows]},
        indent=2,
        default=str,
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(rows: list[Row], machine: dict[str, Any]) -> str:
    """The generated part of docs/BENCHMARKS.md: the machine, then one table row per case."""
    times = sorted(r.measured_at for r in rows if r.measured_at) or [machine["date"]]
    when = times[0] if times[0] == times[-1] else f"between {times[0]} and {times[-1]}"
    lines = [
        f"Measured {when}, last run at commit `{machine['commit']}`, on: {machine['cpu']}, "
        f"{machine['cores']} logical cores, {machine['memory_gib']} GiB RAM, "
        f"Python {machine['python']}, Redis {machine['redis']}, {machine['os']}. "
        f"Load average at the start of the last run: "
        f"{', '.join(map(str, machine['load_average_at_start']))}.",
        "",
        "| Scenario | Case | Figures | Lost/dup | Goal | Note |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = (row.scenario, row.case, figures_text(row), loss_text(row), verdict(row), row.note)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def update_markdown(path: Path, generated: str) -> None:
    """Replace the generated block of ``path`` (between the markers), keeping the prose."""
    block = f"{START_MARK}\n{generated}{END_MARK}"
    if path.exists() and START_MARK in (text := path.read_text()):
        pattern = re.escape(START_MARK) + ".*?" + re.escape(END_MARK)
        path.write_text(re.sub(pattern, lambda _: block, text, flags=re.S))
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# taskcast benchmarks\n\n{block}\n")
