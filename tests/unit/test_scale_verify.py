"""The scale benchmark's read-back check (bench/scale_bench.py `verify`): on a store filled by the
bench's builders and served by a real server, filled records read back through the API match what
was written plus the writes the bench made itself afterwards (host registrations rebinding the
filled ports, `device_id` changes), and the check reports each field that does not: a stale model, a changed
record, a value unlike an API-made one, or too few records to compare."""

from __future__ import annotations

import argparse
import copy
import os
import random
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest

from bench.scale_bench import World, add_arguments, compare, fill, references, verify
from bench.servers import register_hosts
from tests.conftest import ServerHandle, start_server
from tests.support import http
from tests.support.aio import run_in_thread
from vxnet.store.sqlite_store import SqliteStore

CHANGES = ["scale-change-0", "scale-change-1"]   # the bench's watched device_ids


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerHandle, World]]:
    """A server on a filled store whose hosts are registered and one of whose ports had its
    `device_id` changed twice, and the world the bench knows (told about both)."""
    p = argparse.ArgumentParser()
    add_arguments(p)
    opts = p.parse_args(["--scale-hosts", "4", "--scale-networks", "6", "--scale-ports", "24",
                         "--scale-hosts-per-network", "2"])
    store = SqliteStore(os.path.join(tmp_path_factory.mktemp("scale"), "vxnet.db"))
    world = fill(store, opts, random.Random(3), 5)
    h = start_server("", store=store)
    try:
        run_in_thread(lambda: register_hosts([urlparse(h.url).port], h.token("vxnet-agent"), world.hosts))
        world.registered.update(world.hosts)
        pid = world.ports[7]["id"]
        with h.api() as c:
            for value in CHANGES:
                r = c.put(f"/ports/{pid}", json={"port": {"device_id": value}})
                assert r.status_code == 200, r.text
        world.changed[pid] = list(CHANGES)
        yield h, world
    finally:
        h.stop()


def test_filled_records_read_back_as_written_plus_the_bench_s_own_writes(filled: tuple[ServerHandle, World]) -> None:
    h, world = filled
    for seed in range(3):
        assert verify(h.url, h.token("admin"), world, random.Random(seed)) == []
    with h.api() as c:   # the changed port is among the ones compared, with its two later writes
        got = c.get(f"/ports/{world.ports[7]['id']}").json()["port"]
    assert got["device_id"] == CHANGES[-1] and got["revision_number"] == 3 and got["binding:vif_type"] == "tap"


def test_registrations_left_out_of_the_model_are_reported(filled: tuple[ServerHandle, World]) -> None:
    h, world = filled
    stale = copy.deepcopy(world)
    stale.registered.clear()
    problems = verify(h.url, h.token("admin"), stale, random.Random(0))
    ports = [p for p in problems if p.startswith("port ")]
    assert len(ports) == 3 and len(problems) == 3, problems
    assert all("binding:vif_type 'tap' vs 'binding_failed'" in p and "revision_number" in p for p in ports)


def test_a_missed_change_is_reported(filled: tuple[ServerHandle, World]) -> None:
    h, world = filled
    stale = copy.deepcopy(world)
    stale.changed[world.ports[7]["id"]] = CHANGES[-1:]   # one change not counted: revision one behind
    problems = verify(h.url, h.token("admin"), stale, random.Random(0))
    assert problems == [(f"port {world.ports[7]['id']}: read back differs from what was written (+ 2 later writes): "
                         "revision_number 3 vs 2")]


def test_a_record_unlike_what_was_written_is_reported_field_by_field(filled: tuple[ServerHandle, World]) -> None:
    h, world = filled
    stale = copy.deepcopy(world)
    for n in stale.nets:
        n["mtu"] = 1400
    for s in stale.subnets:
        s["enable_dhcp"] = False
    problems = verify(h.url, h.token("admin"), stale, random.Random(0))
    assert sum("network " in p and "mtu 1450 vs 1400" in p for p in problems) == 3, problems
    assert sum("subnet " in p and "enable_dhcp True vs False" in p for p in problems) == 3, problems
    assert len(problems) == 6


def test_too_few_records_to_compare_is_a_problem(filled: tuple[ServerHandle, World]) -> None:
    h, world = filled
    small = copy.deepcopy(world)
    small.nets = small.nets[:2]
    problems = verify(h.url, h.token("admin"), small, random.Random(0))
    assert problems == ["only 2 filled networks to compare"]


def test_values_unlike_an_api_made_record_are_reported(filled: tuple[ServerHandle, World]) -> None:
    h, world = filled
    with http.client(base_url=h.url, headers={"X-Auth-Token": h.token("admin")}, timeout=30) as c:
        refs = references(c)
        written = world.ports[0]
        got = c.get(f"/v2.0/ports/{written['id']}").json()["port"]
    assert compare("ports", written, got, refs["ports"], world) == []
    active = dict(got, status="ACTIVE")   # a field the API-made port has otherwise, and not as written
    problems = compare("ports", written, active, refs["ports"], world)
    assert problems == [f"port {written['id']}: values differ from an API-made one: status 'ACTIVE' vs 'DOWN'",
                        (f"port {written['id']}: read back differs from what was written (+ 1 later writes): "
                         "status 'ACTIVE' vs 'DOWN'")]
    extra = dict(got, extra_dhcp_opts=[])
    assert compare("ports", written, extra, refs["ports"], world)[0] == (
        f"port {written['id']}: fields differ from an API-made one: ['extra_dhcp_opts']")
