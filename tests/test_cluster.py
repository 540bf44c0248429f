"""The store and a bridge on a local 3-master Redis Cluster, with partitioned live streams."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import replace

import orjson
import pytest
from bridge_helpers import BridgeProcess, WsClient, running_bridge
from cluster_helpers import local_cluster
from helpers import wait_for

from taskcast.bridge import Bridge
from taskcast.embedded_redis import EmbeddedCluster
from taskcast.events import Event, Parent, log_data, status_data
from taskcast.store import EventStore
from taskcast.tasks.producer import Producer
from taskcast.worker_config import Settings, load_settings

PARTITIONS = 3


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedCluster]:
    local = local_cluster()
    yield local
    local.close()


@pytest.fixture
def cluster_settings(cluster: EmbeddedCluster, prefix: str) -> Settings:
    return load_settings(
        {},
        redis_url=cluster.url,
        redis_cluster=True,
        live_partitions=PARTITIONS,
        prefix=prefix,
        port=0,
        progress_interval=0,
    )


@pytest.fixture
def cluster_store(cluster_settings: Settings) -> Iterator[EventStore]:
    store = EventStore.connect(cluster_settings)
    yield store
    store.client.close()


def cluster_bridge(settings: Settings) -> AbstractAsyncContextManager[Bridge]:
    """An in-process bridge on the cluster, tailing every partition."""
    return running_bridge(
        settings.redis_url, settings.prefix, redis_cluster=True, live_partitions=PARTITIONS
    )


def ops_in_every_partition(store: EventStore, per_partition: int = 2) -> list[str]:
    found: dict[int, list[str]] = {n: [] for n in range(PARTITIONS)}
    candidate = 0
    while any(len(ids) < per_partition for ids in found.values()):
        op = f"op-{candidate}"
        candidate += 1
        ids = found[store.keys.partition(op)]
        if len(ids) < per_partition:
            ids.append(op)
    return [op for ids in found.values() for op in ids]


def test_every_append_touches_one_slot_and_partitions_spread_over_the_masters(
    cluster: EmbeddedCluster, cluster_store: EventStore
) -> None:
    keys = cluster_store.keys
    masters = {cluster.node_of(key).port for key in keys.lives}
    assert len(masters) > 1, "the partitions' hash tags all landed on one master"
    for op in ops_in_every_partition(cluster_store):
        assert cluster_store.append(Event("status", op, status_data("queued"))) == 1
        assert cluster_store.append(Event("log", op, log_data("info", "x"))) == 2
        assert cluster_store.snapshot(op)["last_seq"] == 2
    listed = cluster_store.list_operations(limit=100)
    assert len(listed) == 2 * PARTITIONS
    updated = [snapshot["updated_at"] for snapshot in listed]
    assert updated == sorted(updated, reverse=True)  # one listing merged from 3 partitions


async def test_a_type_filter_lists_from_every_partition_of_a_cluster(
    cluster_settings: Settings, cluster_store: EventStore
) -> None:
    """The type indexes sit in their partition's slot: the append names them, and a
    listing by type or prefix (the store's, the bridge's) merges them over the masters."""
    ops = ops_in_every_partition(cluster_store)
    for n, op in enumerate(ops):
        kind = "reports.daily" if n % 2 else "reports.weekly"
        cluster_store.append(Event("status", op, status_data("queued"), operation_type=kind))
    daily = cluster_store.list_operations(operation_type="reports.daily")
    every = cluster_store.list_operations(operation_type="reports.*")
    assert sorted(s["operation_id"] for s in daily) == sorted(ops[1::2])
    assert sorted(s["operation_id"] for s in every) == sorted(ops)
    updated = [snapshot["updated_at"] for snapshot in every]
    assert updated == sorted(updated, reverse=True)
    async with cluster_bridge(cluster_settings) as bridge:
        client = await WsClient.open(bridge.url)
        reply = await client.request("list_operations", operation_type="reports.*")
        await client.close()
    assert reply["operations"] == every


async def test_the_bridge_replays_streams_and_resumes_across_partitions(
    cluster_settings: Settings, cluster_store: EventStore
) -> None:
    ops = ops_in_every_partition(cluster_store, per_partition=1)
    for op in ops:
        cluster_store.append(Event("status", op, status_data("queued")))
    async with cluster_bridge(cluster_settings) as bridge:
        client = await WsClient.open(bridge.url)
        for op in ops:
            reply = await client.request("subscribe", operation_id=op)
            assert reply["replayed"] == 1 and reply["recovered"] is True
        for number in range(2, 6):
            for op in ops:
                await asyncio.to_thread(
                    cluster_store.append, Event("log", op, log_data("info", str(number)))
                )
        for op in ops:
            assert [e["seq"] for e in await client.wait_events(op, 5, timeout=10)] == [
                1,
                2,
                3,
                4,
                5,
            ]
        await client.close()
        resumed = await WsClient.open(bridge.url)
        reply = await resumed.request("subscribe", operation_id=ops[0], since=3)
        assert reply["replayed"] == 2 and reply["recovered"] is True
        stats = (await resumed.request("get_stats"))["stats"]
        assert stats["active_operations"] >= len(ops)
        await resumed.close()


async def test_a_master_restart_loses_nothing_for_a_subscriber(
    cluster: EmbeddedCluster, cluster_settings: Settings, cluster_store: EventStore
) -> None:
    op = ops_in_every_partition(cluster_store, per_partition=1)[0]
    node = cluster.node_of(cluster_store.keys.snapshot(op))
    producer = Producer(replace(cluster_settings, emit_timeout=0.5), backoff=0.2)
    try:
        producer.emit(Event("status", op, status_data("queued")))
        async with cluster_bridge(cluster_settings) as bridge:
            client = await WsClient.open(bridge.url)
            await client.request("subscribe", operation_id=op)
            for number in range(1, 31):
                if number == 10:
                    await asyncio.to_thread(node.stop)
                if number == 20:
                    await asyncio.to_thread(node.start)
                    await asyncio.to_thread(cluster.wait_ok)
                producer.emit(Event("log", op, log_data("info", str(number))))
                await asyncio.sleep(0.02)
            await asyncio.to_thread(wait_for, lambda: producer.stats()["outbox"] == 0, 20)
            stats = producer.stats()
            events = await client.wait_events(op, 31, timeout=20)
            await client.close()
    finally:
        producer.close()
    assert stats["failed"] >= 1 and stats["queued"] >= 1, "the master was never missed"
    assert [e["seq"] for e in events] == list(range(1, 32))
    assert [e["data"]["message"] for e in events[1:]] == [str(n) for n in range(1, 31)]


def test_a_cluster_without_partitions_is_a_one_line_error_naming_the_setting() -> None:
    env = dict(os.environ, TASKCAST_REDIS_CLUSTER="true", TASKCAST_LIVE_PARTITIONS="1")
    process = BridgeProcess("--port", "0", env=env)
    assert process.process.wait(15) == 2
    process.stop()
    assert any("TASKCAST_LIVE_PARTITIONS" in line for line in process.lines), process.lines


def test_a_group_whose_members_sit_in_other_slots_aggregates_once_each(
    cluster_store: EventStore,
) -> None:
    """The parent's update is a second call there; repeating a member's event changes nothing."""
    group_id = "group-x"
    candidates = (f"m{n}" for n in range(40))
    members = [op for op in candidates if cluster_store._split(member_event(op, group_id))][:3]
    for n, op in enumerate(members):
        size = len(members) if n == len(members) - 1 else 0
        parent = Parent(group_id, operation_type="celery.group", size=size)
        cluster_store.append(Event("status", op, status_data("queued"), parent=parent))
    for op in members:
        event = member_event(op, group_id)
        seq = cluster_store.append(event)
        cluster_store._aggregate(*cluster_store._member_input(event, ("c", "", ""), seq))
    snapshot = cluster_store.snapshot(group_id)
    assert snapshot["status"] == "completed" and snapshot["children"] == members
    progress = [
        orjson.loads(raw)["data"]["progress"]
        for _, raw in cluster_store.history(group_id)
        if b'"progress"' in raw[:30]
    ]
    assert progress == pytest.approx([0, 1 / 3, 2 / 3, 1])


def member_event(op: str, group_id: str) -> Event:
    return Event("completed", op, {"status": "completed", "duration": 0.1}, parent=Parent(group_id))
