"""Fax through an email gateway: many providers fax the attached PDF of a message sent to an
address built from the number, e.g. "493022776744@fax.example.net". The setting `fax_gateway`
is that address with `{fax}` (the E.164 digits without "+") or `{e164}` (with "+") in it."""

from __future__ import annotations

import phonenumbers

from outreach.compose import parse_address
from outreach.config import Settings
from outreach.errors import ConfigError, HeaderError, InputError


def fax_address(number: str, settings: Settings) -> str:
    """The gateway address for a fax number (ConfigError without a usable gateway setting,
    InputError for a number that is not one)."""
    gateway = settings.fax_gateway
    if "{fax}" not in gateway and "{e164}" not in gateway:
        raise ConfigError(
            "OUTREACH_FAX_GATEWAY must hold {fax} or {e164}, e.g. {fax}@fax.example.net"
        )
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException as exc:
        raise InputError(f"fax {number!r} is not an international number") from exc
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    try:
        address = gateway.format(fax=e164.lstrip("+"), e164=e164)
        return parse_address("To", address).addr_spec
    except (KeyError, IndexError, ValueError, HeaderError) as exc:
        raise ConfigError(f"OUTREACH_FAX_GATEWAY {gateway!r} gives no usable address") from exc
