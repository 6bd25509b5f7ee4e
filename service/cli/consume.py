"""`clickstream consume`: the consumer worker without the web service (headless).

Reads the shards whose leases it holds (every shard when it runs alone; a fair share when
several run on the same stream and lease table, `consumers.coordinator`), counts, archives to
S3 and publishes to CloudWatch, committing each shard only once its archive objects and state
snapshot are durable (`consumers.checkpoint`), so `kill -9` at any moment followed by a restart
changes no number. The printed summary is the fleet's (`ConsumerWorker.summary`).

SIGTERM or SIGINT: stop fetching, commit every shard, hand CloudWatch what it holds, evict the
leases, exit 0 (within 30 s). `--until-idle S` does the same once no record arrived for S
seconds. Either way the last, still-open minutes are published too (nothing is read after).
At exit the merged 24-hour summary is printed on stdout as one JSON line (`--summary-every`
prints one every S seconds as well), in the `GET /api/summary` shape.

Exit codes: 0 after a stop, 1 when the worker failed, 2 for unusable options or settings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Final

import orjson

from consumers.archive_format import IpPrivacy
from consumers.checkpoint import CommitPolicy
from consumers.client_address import TrustedProxies
from consumers.enrich import Enricher
from consumers.geo.reloading import ReloadingGeoLocator
from consumers.scheduler import ConsumerWorker, WorkerConfig, default_worker_id
from service.aws import aws_client
from service.cli.arguments import positive_float
from service.local_stack import use_local_stack_if_running
from service.process_tuning import tune_garbage_collector
from service.settings import Settings

HELP = "consume the stream: counters, S3 archive, CloudWatch"
PROGRESS_EVERY_S = 10.0

log = logging.getLogger("clickstream.consume")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        f"{HELP}. Workers on one stream share its shards through the lease table (one worker "
        "reads every shard); a shard is checkpointed only after its archive objects and state "
        "snapshot are in S3. The summary counts the whole fleet (other workers' shards from "
        "their latest snapshots). SIGTERM or SIGINT commits, evicts the leases and exits 0."
    )
    parser.epilog = (
        "Defaults come from the settings: CLICKSTREAM_STREAM, CLICKSTREAM_BUCKET, "
        "CLICKSTREAM_LEASE_TABLE, CLICKSTREAM_WORKER_ID, CLICKSTREAM_POLL_SECONDS, "
        "CLICKSTREAM_FLUSH_SECONDS, CLICKSTREAM_FLUSH_RECORDS, "
        "CLICKSTREAM_METRICS_INTERVAL_SECONDS, CLICKSTREAM_TOP_CITIES, "
        "CLICKSTREAM_ARCHIVE_IP_MODE, CLICKSTREAM_ARCHIVE_IP_KEY, CLICKSTREAM_TRUSTED_PROXIES, "
        "CLICKSTREAM_ARCHIVE_PREFIX, CLICKSTREAM_GEOIP_DB, CLICKSTREAM_SITE (page patterns), "
        "CLICKSTREAM_FAILOVER_SECONDS, CLICKSTREAM_FLEET_REFRESH_SECONDS."
    )
    parser.add_argument(
        "--summary-every",
        type=positive_float,
        metavar="S",
        help="print the merged 24 h summary as a JSON line every S seconds",
    )
    parser.add_argument(
        "--until-idle",
        type=positive_float,
        metavar="S",
        help="stop (commit, publish everything, exit 0) after S seconds without new records",
    )
    parser.add_argument(
        "--no-metrics", action="store_true", help="publish nothing to CloudWatch (archive only)"
    )


def build_config(settings: Settings) -> WorkerConfig:
    key = settings.archive_ip_key.encode() if settings.archive_ip_key else b""
    return WorkerConfig(
        stream=settings.stream,
        bucket=settings.bucket,
        worker_id=settings.worker_id or local_worker_id(settings.state_dir),
        archive_prefix=settings.archive_prefix,
        poll_interval_s=settings.poll_seconds,
        policy=CommitPolicy(records=settings.flush_records, seconds=settings.flush_seconds),
        metrics_interval_s=settings.metrics_interval_seconds,
        metrics_namespace=settings.metrics_namespace,
        top_cities=settings.top_cities,
        privacy=IpPrivacy(settings.archive_ip_mode, key),
        failover_s=settings.failover_seconds,
        fleet_refresh_s=settings.fleet_refresh_seconds,
    )


_SLOTS: Final = 32
_slot_ids: dict[Path, str] = {}
"""State directory -> this process's worker id (its slot's lock stays held while we live)."""


def local_worker_id(state_dir: Path) -> str:
    """A worker id that survives a restart of this process, and is never shared by two live
    processes: the id kept in the first of the state directory's slot files this process can
    lock (``flock``, released by the kernel even on ``kill -9``). The lease coordinator takes
    the leases its former life left at once, instead of after the failover time, so a crashed
    `consume` restarted on the same machine resumes at once. One id per process (a second
    worker in the same process needs CLICKSTREAM_WORKER_ID); a fresh id if every slot is
    taken or the directory is not writable (then a restart waits for the failover time)."""
    directory = state_dir.resolve()
    if directory in _slot_ids:
        return _slot_ids[directory]
    try:
        (directory / "consumer-ids").mkdir(parents=True, exist_ok=True)
    except OSError:
        return default_worker_id()
    for slot in range(_SLOTS):
        try:
            fd = os.open(directory / "consumer-ids" / f"slot-{slot}", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return default_worker_id()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        worker_id = os.read(fd, 512).decode(errors="replace").strip()
        if not worker_id:
            worker_id = default_worker_id()
            os.write(fd, worker_id.encode() + b"\n")
            os.fsync(fd)
        _slot_ids[directory] = worker_id  # the descriptor stays open: the lock is ours
        return worker_id
    return default_worker_id()


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        config = build_config(settings)
        proxies = TrustedProxies(
            p.strip() for p in settings.trusted_proxies.split(",") if p.strip()
        )
        geo = ReloadingGeoLocator(settings.geoip_db)
    except (ValueError, OSError) as exc:
        print(f"clickstream consume: error: {exc}", file=sys.stderr)
        return 2
    use_local_stack_if_running(settings.state_dir)
    enricher = Enricher(geo, rules=settings.site_rules, trusted_proxies=proxies)
    tune_garbage_collector()
    try:
        return asyncio.run(_main(args, settings, config, enricher))
    finally:
        geo.close()


def _print_summary(worker: ConsumerWorker) -> None:
    sys.stdout.buffer.write(orjson.dumps(worker.summary("24h")) + b"\n")
    sys.stdout.flush()


async def _main(
    args: argparse.Namespace, settings: Settings, config: WorkerConfig, enricher: Enricher
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
    async with contextlib.AsyncExitStack() as clients:
        kinesis = await clients.enter_async_context(aws_client("kinesis"))
        dynamodb = await clients.enter_async_context(aws_client("dynamodb"))
        s3 = await clients.enter_async_context(aws_client("s3", read_timeout=60))
        cloudwatch: Any = None
        if not args.no_metrics:
            cloudwatch = await clients.enter_async_context(aws_client("cloudwatch"))
        worker = ConsumerWorker(
            config,
            kinesis=kinesis,
            dynamodb=dynamodb,
            s3=s3,
            cloudwatch=cloudwatch,
            lease_table=settings.lease_table,
            enricher=enricher,
        )
        try:
            await worker.start()
        except Exception as exc:
            log.error("consumer cannot start: %s", exc)
            return 2
        log.info("consumer %s reading %s", config.worker_id, config.stream)
        code = await _supervise(worker, stop, args)
        # Nothing is read after this stop, so the open minutes can be published safely: a hit for
        # a published minute that a later run reads is added to the next unpublished one.
        await worker.stop(close_open_minutes=True)
        _print_summary(worker)
        return code


async def _supervise(worker: ConsumerWorker, stop: asyncio.Event, args: argparse.Namespace) -> int:
    """Progress logs, periodic summaries and the idle exit, until a signal."""
    started = last_progress = last_summary = time.monotonic()
    records_then = 0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.5)
        now = time.monotonic()
        if now - last_progress >= PROGRESS_EVERY_S:
            rate = (worker.stats.records - records_then) / (now - last_progress)
            log.info(
                "consumed %d records (%.0f/s), %d commits, lag %d ms, %d shards, leases %s",
                worker.stats.records,
                rate,
                worker.stats.commits,
                worker.millis_behind_latest,
                len(worker.processors),
                "healthy" if worker.leases_healthy else "NOT healthy",
            )
            records_then, last_progress = worker.stats.records, now
        if args.summary_every and now - last_summary >= args.summary_every:
            _print_summary(worker)
            last_summary = now
        if not worker.is_running:
            log.error("the consumer's lease or shard task ended; stopping")
            return 1
        if args.until_idle and now - max(worker.stats.last_record_at, started) >= args.until_idle:
            log.info("no records for %.0f s: stopping", args.until_idle)
            stop.set()
    return 0
