"""Who may do what: storing is configured apart from querying and retrieving (which hands out patient data).

A rule names an AE title and/or an address or network; an unset part matches anything. An empty storage
list accepts every sender (the embedded default, logged as a warning at start); an empty Query/Retrieve list
permits nobody. The SCP asks `may_store` / `may_query_retrieve` once per association and offers the Q/R
services only to permitted peers, so an error in the check leaves them unoffered (fails closed).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

# The Query/Retrieve default: this machine only (a newcomer can try findscu at once; nothing leaves it).
LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1/128")


@dataclass(frozen=True)
class PeerRule:
    """One allowed peer: an AE title and/or an address or network (CIDR). An unset part matches anything."""

    ae_title: str | None = None
    network: str | None = None

    def matches(self, ae_title: str, address: str) -> bool:
        if self.ae_title is not None and self.ae_title.strip() != ae_title.strip():
            return False
        if self.network is not None:
            try:
                return ipaddress.ip_address(address) in ipaddress.ip_network(self.network, strict=False)
            except ValueError:
                return False
        return True


LOOPBACK_ONLY: tuple[PeerRule, ...] = tuple(PeerRule(network=n) for n in LOOPBACK_NETWORKS)


@dataclass(frozen=True)
class AccessPolicy:
    store: tuple[PeerRule, ...] = ()  # empty: every peer may store
    query_retrieve: tuple[PeerRule, ...] = LOOPBACK_ONLY  # empty: nobody may query or retrieve

    def may_store(self, ae_title: str, address: str) -> bool:
        return not self.store or any(rule.matches(ae_title, address) for rule in self.store)

    def may_query_retrieve(self, ae_title: str, address: str) -> bool:
        return any(rule.matches(ae_title, address) for rule in self.query_retrieve)
