"""Send windows: a letter goes out in the recipient's office hours, in their own time zone.

A window is {"days": [0, 1, 2, 3, 4], "start": "08:00", "end": "18:00"} (Monday is 0). The
recipient's zone is their `timezone` field, else their country's when it has only one; a country
that spans several zones (US, RU, ...) falls back to the campaign's zone, and `campaign check`
says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel.core import get_global

from outreach.errors import InputError

DAY_NAMES = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


@dataclass(frozen=True)
class Window:
    days: frozenset[int]
    start: time
    end: time

    @classmethod
    def parse(cls, spec: str) -> Window:
        """Read "mon-fri 08:00-18:00" (days optional, also "mon,wed,fri 09:00-12:00")."""
        parts = spec.split()
        days_part, hours_part = (parts[0], parts[1]) if len(parts) == 2 else ("mon-sun", parts[0])
        try:
            start_text, end_text = hours_part.split("-")
            start, end = time.fromisoformat(start_text), time.fromisoformat(end_text)
            days = _days(days_part)
        except (ValueError, IndexError) as exc:
            raise InputError(
                f"send window {spec!r}: write it like 'mon-fri 08:00-18:00' ({exc})"
            ) from exc
        if start >= end:
            raise InputError(f"send window {spec!r}: the start must come before the end")
        return cls(frozenset(days), start, end)

    def to_json(self) -> dict[str, Any]:
        return {"days": sorted(self.days), "start": self.start.isoformat("minutes"),
                "end": self.end.isoformat("minutes")}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Window:
        return cls(
            frozenset(data["days"]),
            time.fromisoformat(data["start"]),
            time.fromisoformat(data["end"]),
        )

    def describe(self) -> str:
        days = ",".join(DAY_NAMES[d] for d in sorted(self.days))
        return f"{days} {self.start:%H:%M}-{self.end:%H:%M}"

    def next_open(self, now: datetime, zone: ZoneInfo) -> datetime:
        """`now` if the window is open at `now` in `zone`, else when it next opens (aware, UTC)."""
        local = now.astimezone(zone)
        for offset in range(8):
            day = local.date() + timedelta(days=offset)
            if day.weekday() not in self.days:
                continue
            opens = datetime.combine(day, self.start, zone)
            closes = datetime.combine(day, self.end, zone)
            if local < closes:
                return max(now, opens.astimezone(now.tzinfo))
        raise InputError(f"send window {self.describe()} never opens")


def _days(text: str) -> list[int]:
    days: list[int] = []
    for item in text.lower().split(","):
        if "-" in item:
            first, last = (DAY_NAMES.index(d) for d in item.split("-"))
            days.extend(range(first, last + 1))
        else:
            days.append(DAY_NAMES.index(item))
    return days


def zone_for(timezone: str, country: str, fallback: str) -> ZoneInfo:
    """The recipient's zone: their own, their country's if it has one zone, else `fallback`."""
    name = timezone or _country_zone(country) or fallback or "UTC"
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InputError(f"unknown time zone {name!r}") from exc


def _country_zone(country: str) -> str:
    """The country's zone when all its zones keep the same clock (DE: Berlin and Büsingen)."""
    zones = get_global("territory_zones").get(country.upper(), []) if country else []
    probes = [datetime(2025, 1, 15, 12), datetime(2025, 7, 15, 12)]
    clocks = {tuple(ZoneInfo(z).utcoffset(p) for p in probes) for z in zones}
    return zones[0] if len(clocks) == 1 else ""
