"""Print the fault suite's report (``chaos-report.json``) as the README's markdown table.

Usage: ``python -m tests.chaos.report [chaos-report.json]``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def table(report: dict[str, Any]) -> str:
    """The report's runs as a markdown table, one row per scenario run."""
    head = ["scenario", "acked", "lost", "unexpected", "dup_exec", "dup_results", "fenced",
            "recovered", "recovery max ms", "jobs/s"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(report["runs"], key=lambda r: _order(r["scenario"])):
        cells = [
            r["scenario"], r.get("acknowledged"), r.get("lost"), r.get("unexpected"),
            r.get("dup_exec"), r.get("dup_results"), r.get("fenced"), r.get("recovered"),
            (r.get("recovery_ms") or {}).get("max"), r.get("throughput_jobs_s"),
        ]  # fmt: skip
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    lines.append("")
    lines.append(f"seed {report['seed']}, {len(report['runs'])} runs in {report['duration_s']} s")
    return "\n".join(lines)


def _order(name: str) -> tuple[int, str]:
    num = name.split()[0].lstrip("S").rstrip("abc")
    return (int(num) if num.isdigit() else 99, name)


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "chaos-report.json")
    print(table(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
