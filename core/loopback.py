"""Which addresses only this machine can reach: the one place a server may listen without logins (the
app) or an API key (the reward server), and the servers a client calls without a proxy. Standard
library only, so a trainer's process importing the reward client stays light."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback address (127.0.0.0/8, ::1, also written ``[::1]`` as
    in a URL, or as an IPv4-mapped IPv6 address)."""
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
        return address.is_loopback or bool(getattr(address, "ipv4_mapped", None) and address.ipv4_mapped.is_loopback)
    except ValueError:
        return False
