"""The rig of the Redis Cluster and Sentinel tests: what it starts is what they claim to test on."""

from __future__ import annotations

from pathlib import Path

from clusterrig import SentinelSet, ValkeyCluster


def test_cluster_has_three_primaries_each_with_a_replica(tmp_path: Path) -> None:
    cluster = ValkeyCluster(tmp_path)
    cluster.start()
    try:
        roles = [n.cli("ROLE").split()[0] for n in cluster.nodes]
        assert sorted(roles) == ["master"] * 3 + ["slave"] * 3
        assert "cluster_slots_ok:16384" in cluster.nodes[0].cli("CLUSTER", "INFO")
        assert cluster.owner("{gk}:events").cli("ROLE").split()[0] == "master"
    finally:
        cluster.stop()
    assert not any(n.running for n in cluster.nodes)


def test_sentinel_set_watches_one_primary_with_a_replica(tmp_path: Path) -> None:
    sentinels = SentinelSet(tmp_path)
    sentinels.start()
    try:
        assert sentinels.current_primary() is sentinels.primary
        assert sentinels.replica.cli("ROLE").split()[0] == "slave"
    finally:
        sentinels.stop()
    assert not any(n.running for n in [*sentinels.sentinels, *sentinels.servers])
