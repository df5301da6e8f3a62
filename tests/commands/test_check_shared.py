"""check's local-IP step: what a shared address exposes, and the default-route warning."""

from __future__ import annotations

import ipaddress

from blitzdns.check import check_shared, render
from blitzdns.config import parse_config
from blitzdns.system.locations import Facts

CONFIG = parse_config(
    "[[shared]]\naddress = '192.0.2.10'\nallow = ['192.0.2.0/24']\nhosts = ['dnd', 'dasher']\n"
    "dns = true\n"
)


def facts(gateway: str, address: str) -> Facts:
    return Facts.make([ipaddress.ip_address(gateway)], [ipaddress.ip_interface(address)])


def test_a_bridge_address_is_reported_without_warning() -> None:
    (step,) = check_shared(CONFIG, facts("198.51.100.1", "192.0.2.10/24"))
    assert step.ok and not step.warning
    assert step.detail == "192.0.2.10 offers dnd, dasher and DNS to 192.0.2.0/24"


def test_an_address_on_the_default_route_warns() -> None:
    (step,) = check_shared(CONFIG, facts("192.0.2.1", "192.0.2.10/24"))
    assert step.ok
    assert "default route (via 192.0.2.1)" in step.warning
    assert "! 192.0.2.10 is on the interface of the default route" in render([step])


def test_an_address_this_machine_does_not_hold_fails() -> None:
    (step,) = check_shared(CONFIG, facts("192.0.2.1", "203.0.113.5/24"))
    assert not step.ok and "does not hold the address" in step.detail
