"""Which addresses only this machine can reach: the one place a server may listen without logins (the
app) or an API key (the reward server), and the servers a client calls without a proxy. Standard
library only, so a trainer's process importing the reward client stays light."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
