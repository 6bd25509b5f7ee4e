"""The pieces of scale-out below the end-to-end runs (`test_scale_out_e2e.py`), on moto with a
fake clock where time matters: a commit outside the fence writes nothing; a restart with the
same worker id takes its former life's leases back at once, a new id waits for expiry; the
`consume` worker id is kept per process slot of the state directory, never shared by two live
processes; a worker's summary counts another worker's shard from its snapshot and says so.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from consumers.checkpoint import ShardCommitter
from consumers.coordinator import CoordinatedLeaseTable, CoordinatorConfig, LeaseCoordinator
from consumers.counters import ShardState
from consumers.leases import TRIM_HORIZON, Checkpoint, LeaseLostError, LeaseTable
from consumers.models import Rejection, UserRecord
from consumers.scheduler import ConsumerWorker, WorkerConfig
from consumers.shard_graph import ShardInfo
from consumers.sinks.s3_archive import S3ArchiveSink
from consumers.snapshots import SnapshotStore
from service.aws import aws_client
from service.resources import ensure_bucket, ensure_lease_table
from tests.consumers.state_support import T0, Feeder, hit

BUCKET = "scale-out-tests"
TABLE = "scale-out-leases"
SHARDS = [f"shardId-{i:012d}" for i in range(2)]
CONFIG = CoordinatorConfig(failover_s=9.0, renew_interval_s=3.0, fencing_margin_s=3.0)
REPO = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def listed() -> dict[str, ShardInfo]:
    return {s: ShardInfo(s, (), "0", "1", closed=False) for s in SHARDS}


@pytest.fixture
async def clients(aws: str) -> AsyncIterator[tuple[Any, Any]]:
    async with aws_client("s3") as s3, aws_client("dynamodb") as dynamodb:
        await ensure_bucket(s3, BUCKET, "us-east-1")
        await ensure_lease_table(dynamodb, TABLE)
        yield s3, dynamodb


async def s3_keys(s3: Any) -> list[str]:
    response = await s3.list_objects_v2(Bucket=BUCKET)
    return sorted(item["Key"] for item in response.get("Contents", []))


@pytest.mark.integration
async def test_a_commit_outside_the_fence_writes_no_archive_object_snapshot_or_checkpoint(
    clients: tuple[Any, Any],
) -> None:
    s3, dynamodb = clients
    clock = FakeClock()
    coordinator = LeaseCoordinator(LeaseTable(dynamodb, TABLE, "a"), CONFIG, clock=clock)
    await coordinator.take_round(listed())
    shard = SHARDS[0]
    archive = S3ArchiveSink(s3, BUCKET, shard, encode_in_thread=False)
    committer = ShardCommitter(
        coordinator.lease(shard),
        CoordinatedLeaseTable(coordinator),
        archive,
        SnapshotStore(s3, BUCKET),
    )
    state = ShardState(shard)
    Feeder()(state, hit(T0))
    archive.add_rejected(UserRecord(shard, "5", 0, float(T0), "e5", b"x"), Rejection("empty", ""))
    await committer.commit(state, Checkpoint("5"))  # inside the fence: everything written
    written = await s3_keys(s3)
    assert any(key.startswith("rejects/") for key in written) and len(written) == 2

    archive.add_rejected(UserRecord(shard, "6", 0, float(T0), "e6", b"x"), Rejection("empty", ""))
    clock.now += CONFIG.failover_s - CONFIG.margin_s  # no renewal: the fence has passed
    with pytest.raises(LeaseLostError):
        await committer.commit(state, Checkpoint("6"))
    assert await s3_keys(s3) == written  # neither the archive object nor the snapshot
    assert (await coordinator.table.get(shard)).checkpoint == Checkpoint("5")
    assert archive.pending.records == 1


@pytest.mark.integration
async def test_a_restart_with_the_same_worker_id_resumes_its_leases_at_once(
    clients: tuple[Any, Any],
) -> None:
    _, dynamodb = clients
    clock = FakeClock()
    before = LeaseCoordinator(LeaseTable(dynamodb, TABLE, "a"), CONFIG, clock=clock)
    await before.take_round(listed())
    assert before.held == set(SHARDS)
    # kill -9: `before` never renews again. Another id would wait for the failover time
    # (test_coordinator.py); the same id restarted knows the rows are its former life's.
    after = LeaseCoordinator(LeaseTable(dynamodb, TABLE, "a"), CONFIG, clock=clock)
    assert sorted((await after.take_round(listed())).taken) == SHARDS
    assert after.held == set(SHARDS) and after.stats.taken == 2


@pytest.mark.integration
async def test_a_lease_lost_later_is_not_taken_back_as_a_former_life(
    clients: tuple[Any, Any],
) -> None:
    _, dynamodb = clients
    clock = FakeClock()
    a = LeaseCoordinator(LeaseTable(dynamodb, TABLE, "a"), CONFIG, clock=clock)
    await a.take_round(listed())
    clock.now += CONFIG.failover_s - CONFIG.margin_s  # fenced: renewals failed meanwhile
    result = await a.take_round(listed())
    assert sorted(result.lost) == SHARDS and result.taken == ()
    assert a.held == set()  # the rows still name "a", yet they wait for expiry like anyone's


def run_python(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_consume_worker_ids_are_kept_per_slot_and_never_shared_by_live_processes(
    tmp_path: Path,
) -> None:
    code = f"""
        import sys
        from pathlib import Path
        from service.cli.consume import local_worker_id
        print(local_worker_id(Path({str(tmp_path)!r})), flush=True)
        sys.stdin.readline()  # hold the slot until told to exit
    """
    first, second = run_python(code), run_python(code)
    assert first.stdout is not None and second.stdout is not None
    ids = [first.stdout.readline().strip(), second.stdout.readline().strip()]
    assert all(ids) and ids[0] != ids[1]
    first.kill()  # as kill -9 does: the kernel releases the slot
    first.wait()
    third = run_python(code)
    assert third.stdout is not None
    assert third.stdout.readline().strip() == ids[0]  # the crashed process's id, resumed
    for process in (second, third):
        process.communicate("\n", timeout=10)


@pytest.mark.integration
async def test_a_summary_counts_another_workers_shard_from_its_snapshot_and_says_so(
    clients: tuple[Any, Any],
) -> None:
    s3, dynamodb = clients
    snapshots = SnapshotStore(s3, BUCKET)

    # Worker "b" committed shard 1 (its snapshot and its checkpoint); "a" holds shard 0.
    other = LeaseTable(dynamodb, TABLE, "b")
    for shard in SHARDS:
        await other.create_lease(shard)
    remote_state = ShardState(SHARDS[1])
    feed = Feeder()
    for i in range(3):
        feed(remote_state, hit(T0 + i, ip=f"198.51.100.{i}"))
    await snapshots.save(remote_state, Checkpoint("7"))
    lease = await other.take((await other.list_leases())[1])
    await other.checkpoint(lease, "7", 0)

    worker = ConsumerWorker(
        WorkerConfig(stream="unused", bucket=BUCKET, worker_id="a"),
        kinesis=None, dynamodb=dynamodb, s3=s3, cloudwatch=None, lease_table=TABLE,
        enricher=None,  # type: ignore[arg-type]  # nothing is processed here
    )  # fmt: skip
    await worker.coordinator.take_round(listed())
    assert worker.coordinator.held == {SHARDS[0]}  # shard 1 is b's, renewed as far as a knows
    await worker._refresh_fleet()
    summary = worker.summary("24h")
    assert summary["totals"]["visitors"] == 3
    fleet = summary["fleet"]
    assert fleet["scope"] == "fleet" and fleet["worker_id"] == "a"
    assert fleet["snapshots"][SHARDS[1]]["owner"] == "b"
    assert fleet["snapshots"][SHARDS[1]]["checkpoint"] == "7"
    assert fleet["missing"] == [] and fleet["local"] == []
    assert (await other.get(SHARDS[0])).checkpoint == Checkpoint(TRIM_HORIZON)
