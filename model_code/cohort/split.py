"""Every host computes the same split of a cohort, balanced by bytes (one 3 GB slide is worth many small
ones): the largest slide first, each to the host with the fewest bytes so far (ties: the first host)."""

from __future__ import annotations

from model_code.cohort.units import Unit


def split(units: list[Unit], hosts: list[str]) -> dict[str, list[Unit]]:
    """Host -> its slides, in the order of `units`; the same on every host for the same listing."""
    load = dict.fromkeys(hosts, 0)
    owner: dict[str, str] = {}
    for one in sorted(units, key=lambda u: (-u.size, u.name)):
        host = min(hosts, key=lambda h: (load[h], hosts.index(h)))
        owner[one.name] = host
        load[host] += one.size
    return {host: [u for u in units if owner[u.name] == host] for host in hosts}
