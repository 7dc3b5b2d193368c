"""`vxnet trace`: explain any packet's fate hop by hop (walk.py) from the same desired state the
agents compute (snapshot.py), and check it against the real kernels with `--live` (live.py)."""

from __future__ import annotations

from vxnet.trace.snapshot import Snapshot, fetch
from vxnet.trace.walk import Hop, Trace, walk


def run(url: str, token: str, source: str, dst_ip: str, proto: str = "icmp", dport: int | None = None,
        live: bool = False, src_ip: str | None = None, sport: int | None = None) -> Trace:
    """Fetch the state, walk the packet, optionally verify against the kernels."""
    t = walk(fetch(url, token), source, dst_ip, proto, dport, src_ip, sport)
    if live:
        from vxnet.trace.live import verify

        verify(t)
    return t


def explain_drop(url: str, token: str, source: str, dst_ip: str, proto: str, dport: int | None) -> str:
    """One line naming why a packet does not arrive ("" when the trace says it arrives)."""
    t = run(url, token, source, dst_ip, proto, dport)
    if t.verdict in ("delivered", "leaves"):
        return ""
    return f"{t.verdict}: {t.summary} ({t.deciding})"


def render(t: Trace) -> list[str]:
    """Human-readable lines."""
    lines = []
    for i, h in enumerate(t.hops, 1):
        lines.append(f"{i:2}. [{h.host}] {h.what}")
        lines.append(f"      {h.decision}")
        if h.live:
            lines.append(f"      live: {h.live}")
    lines.append(f"verdict: {t.verdict.upper()} - {t.summary}" + (f" (deciding: {t.deciding})" if t.deciding else ""))
    if t.drift:
        lines.append(f"DRIFT on {len(t.drift)} hop(s): the kernel disagrees with the desired state")
    return lines


__all__ = ["Hop", "Snapshot", "Trace", "explain_drop", "fetch", "render", "run", "walk"]
