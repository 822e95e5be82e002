"""How the `openft` client commands print: rich tables and panels for people, one JSON document for scripts."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone

from rich.console import Console
from rich.table import Table


def plain(obj):
    """An SDK object (or anything JSON can hold) as plain JSON data."""
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if isinstance(obj, list):
        return [plain(o) for o in obj]
    return obj


def _cell(value, key: str) -> str:
    if value is None:
        return ""
    if key.endswith("_at") or key == "created":
        return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


class Views:
    def __init__(self, as_json: bool):
        self.json = as_json
        # Piped output is not wrapped at 80 columns: ids must stay whole for grep and cut.
        self.out = Console(highlight=False, width=None if sys.stdout.isatty() else 240)
        self.err = Console(stderr=True, highlight=False)

    def show(self, obj) -> int:
        """One object: JSON, or a two-column table of its fields."""
        data = plain(obj)
        if self.json:
            print(json.dumps(data, indent=2))
            return 0
        table = Table(show_header=False, box=None)
        for key, value in data.items():
            table.add_row(f"[bold]{key}[/]", _cell(value, key))
        self.out.print(table)
        return 0

    def table(self, rows: list, columns: list[str]) -> int:
        data = plain(rows)
        if self.json:
            print(json.dumps(data, indent=2))
            return 0
        table = Table()
        for column in columns:
            table.add_column(column, no_wrap=column in ("id", "model", "fine_tuned_model", "filename"))
        for row in data:
            table.add_row(*(_cell(row.get(c), c) for c in columns))
        self.out.print(table)
        return 0

    def plan(self, plan: dict) -> int:
        """A dry run's plan."""
        if self.json:
            print(json.dumps(plan, indent=2))
            return 0
        hp = plan["method"][plan["method"]["type"]]["hyperparameters"]
        files = [f for f in (plan["training_file"], plan["validation_file"]) if f]
        self.out.print(f"[bold]Dry run[/] of {plan['method']['type']} fine-tuning of {plan['model']} (nothing created)")
        for f in files:
            self.out.print(f"  {f['id']}: {f['n_examples']} examples, {f['n_tokens']} tokens, "
                           f"{f['n_truncated']} truncated")
        self.out.print("  hyperparameters: " + ", ".join(f"{k}={v}" for k, v in hp.items()))
        self.out.print(f"  {plan['total_steps']} steps, {plan['trained_tokens']} trained tokens")
        source = plan["calibration"]["source"]
        self.out.print(f"  estimated time: {_duration(plan['estimated_seconds'])} ({source} throughput, "
                       f"{plan['calibration']['tokens_per_second']} tokens/s); estimated peak memory: "
                       f"{plan['estimated_peak_memory_bytes'] / 2**30:.2f} GiB")
        return 0

    def error(self, message: str, param: str | None = None, code: str | None = None) -> None:
        if self.json:
            print(json.dumps({"error": {"message": message, "param": param, "code": code}}), file=sys.stderr)
            return
        detail = ", ".join(x for x in (code and f"code {code}", param and f"param {param}") if x)
        self.err.print(f"[red]error:[/] {message}" + (f" ({detail})" if detail else ""))


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"
