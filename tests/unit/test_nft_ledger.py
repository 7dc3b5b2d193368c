"""The ledger of our own nftables commits (dataplane/nft_ledger.py): a chain of generations each
step of which was one of ours; a token proves "nobody else committed" only while the namespace's
generation is the head of its chain. Pure logic: generations are given, not read."""

from __future__ import annotations

from vxnet.dataplane.nft_ledger import Ledger

NS = (1, 4026531840)
OTHER = (1, 4026532000)


def test_own_commits_chain_and_prove_nobody_else_committed() -> None:
    led = Ledger()
    fw = led.commit(NS, 10, 11)                  # the firewall's transaction
    assert fw is not None and fw.gen == 11
    assert led.unchanged(fw, 11)
    dhcp = led.commit(NS, 11, 12)                # the DHCP steering table's, right after it
    assert dhcp is not None and dhcp.epoch == fw.epoch
    assert led.commit(NS, 12, 12) is not None    # a transaction that changed nothing
    assert led.unchanged(fw, 12)                 # every commit since the firewall's was ours
    assert not led.unchanged(fw, 13)             # the generation moved past the chain: someone else
    assert not led.unchanged(None, 12) and not led.unchanged(fw, None)


def test_a_foreign_commit_breaks_the_chain_for_good() -> None:
    led = Ledger()
    fw = led.commit(NS, 10, 11)
    # someone else committed (11 -> 12), then our DHCP transaction (12 -> 13): a clean window,
    # but not on the chain: a new one starts, the firewall's token proves nothing any more
    dhcp = led.commit(NS, 12, 13)
    assert dhcp is not None and fw is not None and dhcp.epoch != fw.epoch
    assert not led.unchanged(fw, 13)
    assert led.unchanged(dhcp, 13)
    # a window with someone else's commit in it (two steps): no chain at all until a clean one
    assert led.commit(NS, 13, 15) is None
    assert not led.unchanged(dhcp, 15)
    again = led.commit(NS, 15, 16)
    assert again is not None and led.unchanged(again, 16) and again.epoch != dhcp.epoch


def test_failed_transactions_and_unreadable_generations() -> None:
    led = Ledger()
    fw = led.commit(NS, 10, 11)
    assert led.commit(NS, 11, 11, ok=False) is not None     # refused, nothing committed: chain goes on
    assert led.unchanged(fw, 11)
    # refused, yet the generation moved: that commit was someone else's
    assert led.commit(NS, 11, 12, ok=False) is None
    assert not led.unchanged(fw, 12)
    fw = led.commit(NS, 12, 13)
    assert led.commit(NS, None, 14) is None and not led.unchanged(fw, 14)


def test_mark_and_foreign_and_namespaces_apart() -> None:
    led = Ledger()
    verified = led.mark(NS, 20)                  # the firewall read its tables after reading 20
    assert led.unchanged(verified, 20)
    assert led.mark(NS, 20).epoch == verified.epoch       # nothing happened since: same chain
    other = led.commit(OTHER, 5, 6)              # another namespace's commits do not matter here
    assert other is not None and led.unchanged(verified, 20)
    led.foreign(NS)                              # a commit we could not bracket (the nft program)
    assert not led.unchanged(verified, 20)
    assert led.unchanged(other, 6)
    # generations wrap at 32 bits and skip 0
    w = led.commit(NS, 0xFFFFFFFF, 1)
    assert w is not None and led.unchanged(w, 1)
