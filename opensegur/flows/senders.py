"""Which addresses may open an MLLP connection: the ``senders`` the DPIs of the hospital's configuration declare.

The union of every DPI's addresses and networks is allowed. When no DPI declares any (no configuration
directory, or a ``dpis.toml`` without ``senders``), only loopback is: the listener is then reachable by a sender on
the platform's own host (the demo, ``opensegur send``, an interface engine beside it) and by nobody on the
hospital's network until the configuration names who. Opening to everyone with a warning would make a missing
key the way to expose patient intake to the whole network.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable

from opensegur.hospital.model import HospitalConfig

__all__ = ["LOOPBACK", "SenderAllowlist", "sender_networks"]

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

LOOPBACK: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def sender_networks(hospital: HospitalConfig | None) -> tuple[Network, ...]:
    """The networks allowed to connect: every DPI's ``senders``, else loopback only."""
    declared = {
        ipaddress.ip_network(sender, strict=False)
        for dpi in (hospital.dpis if hospital is not None else ())
        for sender in dpi.senders
    }
    return tuple(sorted(declared, key=str)) if declared else LOOPBACK


class SenderAllowlist:
    """``MllpServer(allow_peer=...)``: reads the configuration in force at each connection, so a reload (SIGHUP,
    the admin page) applies to the next connection without restarting the listener. The networks are computed
    again only when the configuration object changes (a reload replaces it)."""

    def __init__(self, current: Callable[[], HospitalConfig | None]) -> None:
        self._current = current
        self._for: HospitalConfig | None = None
        self._networks: tuple[Network, ...] | None = None

    @property
    def networks(self) -> tuple[Network, ...]:
        hospital = self._current()
        if self._networks is None or hospital is not self._for:
            self._networks = sender_networks(hospital)
            self._for = hospital
            if self._networks is LOOPBACK:
                log.warning(
                    "Aucun DPI ne déclare d'adresse d'émission (senders dans dpis.toml) : "
                    "l'écoute MLLP n'accepte que les connexions locales (127.0.0.1, ::1)"
                )
        return self._networks

    def __call__(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)
