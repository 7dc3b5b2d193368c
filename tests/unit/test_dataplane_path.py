"""The per-packet work of a host's computed ruleset for a frame of the data path (pure; issue
18: vxnet's cost per packet against a hand-built ruleset).

A TCP frame of an established flow between two VMs passes, on each host, the bridge
prerouting chains (DHCP and metadata steering, port security), the inet prerouting `zone`
chain, the bridge forward chains (`out`, metadata) and the inet forward `egress`/`ingress`
chains. Asserted on the tables the agent would load:
- the forward base chains decide an established packet at their first rule (no dispatch
  lookup, no port chain);
- no rule of those chains starts with a device-name match (`iifname`/`oifname` copy and pad
  the name for every frame they see), except the metadata table's last rule (one copy per
  forwarded frame): every other rule a TCP frame does not match fails it on a cheap comparison
  first. With the dispatch and zone lookups that is 4 name copies per frame and host on a
  host without stateless ports (11 before), one more with them (the stateless-ingress rule).
"""

from __future__ import annotations

import re

from tests.unit.test_firewall import G1, GS, base_ports, port, view
from vxnet.compute import dhcp, metadata
from vxnet.compute.firewall import compute_firewall
from vxnet.compute.nft_table import NftTable

NAME_FIRST = re.compile(r'^(?:counter )?(?:iif|oif)name "')          # a rule that starts by copying a name
NAME_LOOKUP = re.compile(r"\b(?:iif|oif)name (?:vmap|map) |\b(?:iif|oif)name \. ")  # one copy for a lookup


def _fw_chains(stateless: bool = False) -> dict[str, list[str]]:
    ports = base_ports() + [port("p5000000-0000-4000-8000-000000000005", "192.0.2.15", groups=(G1,))]
    fw = compute_firewall(view([p for p in ports if stateless or GS not in p["security_groups"]]), "h1")
    ps, sg, _ = fw.tables
    chains: dict[str, list[str]] = {}
    for t in (ps, sg):
        assert isinstance(t, NftTable)
        for c in t.chains:
            if c.hook and "hook input" not in c.hook:      # the host guard sees no bridged frame
                chains[f"{t.family} {c.name}"] = [r.text for r in c.rules]
    return chains


def _script_chains(script: str) -> dict[str, list[str]]:
    """Rule lines of the base chains of a `table { chain { type ...; rules } }` script."""
    out: dict[str, list[str]] = {}
    for m in re.finditer(r"chain (\w+) \{\n\s*type [^\n]*\n(.*?)\n\s*\}", script, re.DOTALL):
        out[m.group(1)] = [ln.strip() for ln in m.group(2).splitlines() if ln.strip()]
    return out


def _steering_chains() -> dict[str, list[str]]:
    from tests.unit.test_metadata import port as mport
    from tests.unit.test_metadata import view as mview

    st = metadata.compute_metadata(mview([mport("p1000000-a", "192.0.2.11")]), "h1")
    meta = {f"meta {k}": v for k, v in _script_chains(metadata.nft_script(st)).items()}
    dh = dhcp.steer_script(None, frozenset({'"tapp1000000-a" : 0a:00:00:00:00:01'}))
    return meta | {f"dhcp {k}": v for k, v in _script_chains(dh).items()}


def test_forward_chains_accept_an_established_packet_at_their_first_rule() -> None:
    chains = _fw_chains()
    for name in ("inet egress", "inet ingress"):
        assert chains[name][0].startswith("ct state established,related"), chains[name]
        assert " accept " in chains[name][0]


def _name_copies(chains: dict[str, list[str]]) -> list[tuple[str, str]]:
    """(chain, rule) of every rule that copies a device name for a TCP frame of a stateful
    port: the rules that start with a name match, and the lookups keyed on a name."""
    return [(c, r.split(" comment")[0]) for c, rules in chains.items() for r in rules
            if NAME_FIRST.match(r) or NAME_LOOKUP.search(r)]


def test_a_tcp_frame_copies_a_device_name_only_for_lookups() -> None:
    chains = _fw_chains() | _steering_chains()
    assert {"bridge pre", "bridge out", "inet zone", "inet egress", "inet ingress", "meta prerouting",
            "meta forward", "dhcp prerouting"} <= set(chains)
    name_first = [(c, r.split(" counter")[0]) for c, rules in chains.items() for r in rules if NAME_FIRST.match(r)]
    assert name_first == [("meta forward", 'oifname "vxpm*"')]
    # the metadata rules before it match the address or ether type first
    assert all(not NAME_FIRST.match(r) for r in chains["meta prerouting"])
    copies = _name_copies({c: rs for c, rs in chains.items() if not c.startswith(("meta", "dhcp"))})
    assert [c for c, _ in copies] == ["bridge pre", "bridge out", "inet zone"], copies
    assert len(copies) + len(name_first) == 4
    # with a stateless port on the host, its ingress notrack rule is keyed on the bridge name: one more
    more = _name_copies(_fw_chains(stateless=True))
    assert [c for c, _ in more] == ["bridge pre", "bridge out", "inet zone", "inet zone"], more
