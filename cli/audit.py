"""``mlrig audit``: read the audit log."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import click

from mlrig.cli.context import get_platform, require
from mlrig.cli.output import json_option, print_json, print_table
from mlrig.security.roles import Permission

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(value: str) -> datetime:
    """``30m``, ``2h``, ``7d`` ago, or an ISO 8601 time."""
    if value and value[-1] in _UNITS and value[:-1].isdigit():
        try:
            return datetime.now(timezone.utc) - timedelta(**{_UNITS[value[-1]]: int(value[:-1])})
        except OverflowError:  # more than datetime can hold: before year 1
            msg = f"--since {value!r}: too far back; give a shorter duration or an ISO time"
            raise click.BadParameter(msg) from None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        msg = f"--since {value!r}: use a duration like 30m, 2h, 7d or an ISO time"
        raise click.BadParameter(msg) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


@click.command()
@click.option("--since", help="Only entries since then: 30m, 2h, 7d or an ISO 8601 time.")
@click.option("--actor", help="Only this actor.")
@click.option("--action", help="Only this action.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@json_option
def audit(
    since: str | None, actor: str | None, action: str | None, limit: int, as_json: bool
) -> None:
    """Show the audit log, newest first (admin only)."""
    require(Permission.ADMIN)
    rows = get_platform().audit.query(
        since=parse_since(since) if since else None, actor=actor, action=action, limit=limit
    )
    if as_json:
        print_json(rows)
        return
    print_table(
        "audit log",
        ["at", "actor", "action", "resource", "outcome", "request"],
        (
            [
                e["at"],
                e["actor"],
                e["action"],
                f"{e['resource_type'] or ''}/{e['resource_id'] or ''}",
                e["outcome"],
                e["request_id"],
            ]
            for e in rows
        ),
    )
