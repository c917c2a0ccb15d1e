"""Send windows in the recipient's own time zone."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from outreach.errors import InputError
from outreach.windows import Window, zone_for

OFFICE = Window.parse("mon-fri 08:00-18:00")
BERLIN = zone_for("", "DE", "")


def test_open_window_sends_now() -> None:
    monday_noon = datetime(2026, 12, 7, 11, 0, tzinfo=UTC)  # 12:00 in Berlin
    assert OFFICE.next_open(monday_noon, BERLIN) == monday_noon


def test_saturday_waits_for_monday_morning_local_time() -> None:
    saturday = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
    assert OFFICE.next_open(saturday, BERLIN) == datetime(2026, 12, 7, 7, 0, tzinfo=UTC)


def test_after_hours_waits_for_the_next_day() -> None:
    monday_evening = datetime(2026, 12, 7, 17, 30, tzinfo=UTC)  # 18:30 in Berlin
    assert OFFICE.next_open(monday_evening, BERLIN) == datetime(2026, 12, 8, 7, 0, tzinfo=UTC)


def test_zones_from_field_country_or_fallback() -> None:
    assert str(zone_for("America/New_York", "DE", "")) == "America/New_York"
    assert str(zone_for("", "BE", "")) == "Europe/Brussels"
    assert str(zone_for("", "US", "Europe/Brussels")) == "Europe/Brussels"  # several zones


@pytest.mark.parametrize("spec", ["mon-fri", "mon-fri 18:00-08:00", "someday 08:00-09:00"])
def test_malformed_windows_are_refused(spec: str) -> None:
    with pytest.raises(InputError, match="send window"):
        Window.parse(spec)


def test_round_trip_through_json() -> None:
    assert Window.from_json(OFFICE.to_json()) == OFFICE
    assert OFFICE.describe() == "mon,tue,wed,thu,fri 08:00-18:00"
