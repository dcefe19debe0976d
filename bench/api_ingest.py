"""``POST /api/v1/usage/events`` under gunicorn on PostgreSQL, against a raw COPY.

Target: at least 30,000 events/s sustained, and at least a third of the raw rate.
On a fresh PostgreSQL database, gunicorn (``gunicorn.conf.py``, as ``make run-prod``
starts it: JSON access logs, rate limits and job dispatch through Redis when Redis
answers) serves the API; several clients, one tenant and API key each (a metering
pipeline per customer), each post batches of 1,000 events over a kept-alive
connection, one after another, as fast as they are answered. The request bodies
are encoded before any clock starts; one warm-up batch per client runs first.

The baseline COPYs the same rows, column for column, into ``usage_event`` for
another tenant, one COPY and commit per batch of 1,000 (the service commits each
batch), from rows prepared in advance, on one connection of this process. The two
are timed in turn, round by round (every client's next batches through the API,
then the same number of rows by COPY), so that both see the same machine: anything
else running slows both alike. Each rate is its events over the sum of its rounds'
wall times.

The notes add the CPU time that the gunicorn workers and their PostgreSQL backends
spent per 1,000 events (from /proc), which says how fast the machine's cores could
go at best. ``BENCH_PROFILE=DIR`` records each worker with py-spy (``--gil``: Python
CPU only) while the clock runs, one raw flame-graph file per worker.

    python bench/api_ingest.py [--quick] [--workers N] [--threads N] [--clients N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    PROJECT_ROOT,
    Measure,
    Row,
    Stopwatch,
    log,
    migrated_app,
    new_tenant,
    postgres_database,
    report,
)
from bench.ingest import BATCH, COLUMNS, generate_events, raw_rows

BENCHMARK = "api_ingest"
FULL_EVENTS = 240_000
QUICK_EVENTS = 48_000
ROUND_BATCHES = 4  # batches per client in each round of API requests
TARGET_RATE = 30_000
TARGET_RATIO = 1 / 3
# The settings that gave the best sustained rate on the 2-core machine: sync workers,
# two per core, since each spends part of a request waiting for PostgreSQL (README).
DEFAULT_WORKERS = 4
DEFAULT_THREADS = 1
DEFAULT_CLIENTS = 8
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
START_TIMEOUT = 90


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller size, for a fast check")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help="threads per worker (1: sync workers)")
    parser.add_argument("--clients", type=int, default=DEFAULT_CLIENTS,
                        help="concurrent clients, one tenant each")
    args = parser.parse_args()
    for name in ("workers", "threads", "clients"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _redis_answers() -> bool:
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
        client.flushdb()
        return True
    except Exception:  # noqa: BLE001 - no Redis: the bench runs without it
        return False


def _wire(event: dict) -> dict:
    """The event as a client sends it: timestamps as RFC 3339 text."""
    moment = event["timestamp"]
    if isinstance(moment, dt.datetime):
        event = dict(event, timestamp=moment.isoformat().replace("+00:00", "Z"))
    return event


def request_bodies(events: list[dict]) -> list[bytes]:
    return [json.dumps({"events": [_wire(e) for e in events[i:i + BATCH]]}).encode()
            for i in range(0, len(events), BATCH)]


class Gunicorn:
    """gunicorn with the project's gunicorn.conf.py on a free port, logging to a file."""

    def __init__(self, url: str, workers: int, threads: int, redis: bool, log_dir: str):
        self.port = _free_port()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("BILLFOLD_") and k != "PROMETHEUS_MULTIPROC_DIR"}
        env.update({
            "BILLFOLD_DATABASE_URL": url, "BILLFOLD_SECRET_KEY": "bench-" + "x" * 40,
            "BILLFOLD_WEB_BIND": f"127.0.0.1:{self.port}", "BILLFOLD_WEB_WORKERS": str(workers),
            "BILLFOLD_WEB_THREADS": str(threads), "BILLFOLD_LOG_FORMAT": "json",
            "BILLFOLD_API_INGEST_RATE_LIMIT": "1000000 per minute",
            "PROMETHEUS_MULTIPROC_DIR": str(Path(log_dir) / "metrics"),
        })
        if redis:
            env.update({"BILLFOLD_RATELIMIT_STORAGE_URI": REDIS_URL,
                        "BILLFOLD_CELERY_BROKER_URL": REDIS_URL,
                        "BILLFOLD_JOBS_EAGER": "false"})
        Path(env["PROMETHEUS_MULTIPROC_DIR"]).mkdir()
        self.env, self.log_path = env, Path(log_dir) / "gunicorn.log"

    def __enter__(self) -> Gunicorn:
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in __exit__
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(PROJECT_ROOT / "gunicorn.conf.py")],
            cwd=PROJECT_ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit("gunicorn exited:\n" + self.log_path.read_text()[-3000:])
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                connection.request("GET", "/health/live")
                if connection.getresponse().status == 200:
                    return self
            except OSError:
                time.sleep(0.2)
        self.__exit__()
        raise SystemExit("gunicorn did not answer in time")

    def worker_pids(self) -> list[int]:
        """The gunicorn workers (children of the master), for a profiler."""
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True,
                             text=True).stdout
        return [int(pid) for pid in out.split()]

    def __exit__(self, *exc_info) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()
        self.log.close()


class Client:
    """One metering pipeline: a kept-alive connection and its tenant's key."""

    def __init__(self, port: int, secret: str):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.headers = {"Authorization": f"Bearer {secret}",
                        "Content-Type": "application/json"}

    def post(self, bodies: list[bytes]) -> int:
        """Send ``bodies`` one after another; the number of events accepted."""
        accepted = 0
        for body in bodies:
            self.connection.request("POST", "/api/v1/usage/events", body=body,
                                    headers=self.headers)
            response = self.connection.getresponse()
            payload = response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {payload[:300]!r}")
            accepted += json.loads(payload)["accepted"]
        return accepted


def post_round(clients: list[Client], bodies: list[list[bytes]]) -> tuple[float, int]:
    """Every client sends its bodies at once; seconds until the last answer and the
    events accepted."""
    results: list = [None] * len(clients)

    def send(index: int) -> None:
        try:
            results[index] = clients[index].post(bodies[index])
        except Exception as exc:  # noqa: BLE001 - reported below
            results[index] = exc

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(clients))]
    with Stopwatch() as clock:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    failures = [r for r in results if isinstance(r, Exception)]
    if failures:
        raise RuntimeError(f"{len(failures)} client(s) failed: {failures[0]}")
    return clock.seconds, sum(results)


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU time the processes ``pids`` have used so far."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue  # ended meanwhile
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def server_backends(conn) -> list[int]:
    """PostgreSQL's processes serving the gunicorn workers: the client backends of this
    database other than this process's own connections."""
    from portal.extensions import db

    own = {conn.info.backend_pid,
           db.session.connection().connection.driver_connection.info.backend_pid}
    pids = [pid for (pid,) in conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND backend_type = 'client backend'").fetchall() if pid not in own]
    conn.commit()
    return pids


def copy_writer(rows: list[tuple]):
    """A function that COPYs rows[start:end] into usage_event (binary COPY, as the
    service writes) and commits, and one
    that releases its connection."""
    from plans.metering import EVENT_COPY_TYPES
    from portal.extensions import db

    sql = "COPY usage_event ({}) FROM STDIN (FORMAT BINARY)".format(", ".join(COLUMNS))
    pooled = db.engine.raw_connection()
    conn = pooled.driver_connection

    def write(start: int, end: int) -> None:
        for first in range(start, end, BATCH):
            with conn.cursor() as cur, cur.copy(sql) as copy:
                copy.set_types([*EVENT_COPY_TYPES, "timestamptz"])  # and ingested_at
                for row in rows[first:min(first + BATCH, end)]:
                    copy.write_row(row)
            conn.commit()

    return write, pooled.close, conn


def count_events(tenant_ids: list[int]) -> int:
    from sqlalchemy import text

    from portal.extensions import db

    total = db.session.execute(text("SELECT count(*) FROM usage_event WHERE tenant_id = "
                                    "ANY(:ids)"), {"ids": tenant_ids}).scalar()
    db.session.rollback()
    return int(total)


def run(args: argparse.Namespace, count: int) -> Row:
    from api.keys import create_key
    from portal.audit import Actor

    per_round = args.clients * ROUND_BATCHES
    rounds = max(1, count // BATCH // per_round)
    total = rounds * per_round * BATCH
    per_client = rounds * ROUND_BATCHES * BATCH
    log(f"generating {total:,} events for {args.clients} clients")
    streams = [generate_events(per_client + BATCH, seed=100 + n) for n in range(args.clients)]
    for n, stream in enumerate(streams):  # ids unique across clients, for the COPY too
        for event in stream:
            event["id"] = f"c{n}-{event['id']}"
    warmups = [request_bodies(stream[:BATCH]) for stream in streams]
    bodies = [request_bodies(stream[BATCH:]) for stream in streams]
    redis = _redis_answers()
    if not redis:
        log(f"Redis does not answer at {REDIS_URL}: rate limits in memory, jobs in-process")
    with postgres_database("bench_api_ingest") as url, migrated_app(url), \
            tempfile.TemporaryDirectory(prefix="bench_api_ingest_") as tmp:
        tenants = [new_tenant(f"bench-client-{n}") for n in range(args.clients)]
        secrets = [create_key(Actor.system("bench"), t, "bench", "usage:write")[1]
                   for t in tenants]
        tenant_ids = [t.id for t in tenants]
        raw_tenant = new_tenant("bench-raw")
        # The COPY writes the rows the API stores, round by round in the same order.
        ordered = [e for r in range(rounds) for stream in streams
                   for e in stream[BATCH + r * ROUND_BATCHES * BATCH:
                                   BATCH + (r + 1) * ROUND_BATCHES * BATCH]]
        rows = raw_rows(raw_tenant, ordered)
        write, close, copy_connection = copy_writer(rows)
        log(f"gunicorn: {args.workers} worker(s) x {args.threads} thread(s)")
        service_s = raw_s = web_cpu = db_cpu = copy_cpu = 0.0
        accepted = 0
        try:
            with Gunicorn(url, args.workers, args.threads, redis, tmp) as server:
                clients = [Client(server.port, secret) for secret in secrets]
                post_round(clients, warmups)
                log(f"{args.clients} clients posting {total:,} events in batches of "
                    f"{BATCH:,}, in {rounds} rounds, each followed by its COPY")
                profile = _start_profiler(server)
                workers = server.worker_pids()
                copy_backend = [copy_connection.info.backend_pid]
                for r in range(rounds):
                    chunk = slice(r * ROUND_BATCHES, (r + 1) * ROUND_BATCHES)
                    backends = server_backends(copy_connection)
                    cpu = cpu_seconds(workers), cpu_seconds(backends)
                    seconds, got = post_round(clients, [b[chunk] for b in bodies])
                    web_cpu += cpu_seconds(workers) - cpu[0]
                    db_cpu += cpu_seconds(backends) - cpu[1]
                    service_s += seconds
                    accepted += got
                    cpu = cpu_seconds(copy_backend)
                    with Stopwatch() as clock:
                        write(r * per_round * BATCH, (r + 1) * per_round * BATCH)
                    raw_s += clock.seconds
                    copy_cpu += cpu_seconds(copy_backend) - cpu
                _stop_profiler(profile)
                for client in clients:
                    client.connection.close()
        finally:
            close()
        stored = count_events(tenant_ids)
        if accepted != total or stored != total + args.clients * BATCH:
            raise RuntimeError(f"accepted {accepted:,} and stored {stored:,} of "
                               f"{total:,} events (+ the warm-up)")
    service_rate, raw_rate = total / service_s, len(rows) / raw_s
    ratio = service_rate / raw_rate
    met = service_rate >= TARGET_RATE and ratio >= TARGET_RATIO
    verdict = (("meets target" if met else "below target")
               + f" (>= {TARGET_RATE:,} events/s and >= {TARGET_RATIO:.2f})")
    return Row(case=f"postgresql, {args.workers}w x {args.threads}t, {args.clients} clients",
               measured=Measure("API", service_rate, "events/s"),
               baseline=Measure("COPY", raw_rate, "events/s"),
               ratio=ratio, ratio_label="API/COPY", verdict=verdict,
               details={"events": total, "batch": BATCH, "workers": args.workers,
                        "threads": args.threads, "clients": args.clients, "rounds": rounds,
                        "redis": redis, "service_seconds": round(service_s, 3),
                        "raw_seconds": round(raw_s, 3),
                        # CPU per 1,000 events: less sensitive than rates to whatever
                        # else runs on the machine.
                        "web_cpu_ms_per_1000": round(web_cpu / total * 1e6, 1),
                        "db_cpu_ms_per_1000": round(db_cpu / total * 1e6, 1),
                        "copy_db_cpu_ms_per_1000": round(copy_cpu / len(rows) * 1e6, 1)})


def _start_profiler(server: Gunicorn):
    """With BENCH_PROFILE=DIR, py-spy records each worker while the clock runs."""
    target = os.environ.get("BENCH_PROFILE")
    if not target:
        return []
    Path(target).mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        raise SystemExit(f"BENCH_PROFILE needs py-spy: {Path(sys.executable).parent}/pip "
                         "install py-spy")
    return [subprocess.Popen([str(spy), "record", "--pid", str(pid), "--format", "raw",
                              "--rate", "200", "--gil", "--output", f"{target}/worker-{pid}.txt"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for pid in server.worker_pids()]


def _stop_profiler(profilers: list) -> None:
    import signal

    for process in profilers:
        process.send_signal(signal.SIGINT)
    for process in profilers:
        process.wait(timeout=60)


def main() -> None:
    args = parse_args()
    count = QUICK_EVENTS if args.quick else FULL_EVENTS
    row = run(args, count)
    details = row.details
    cpu_per_event = (details["web_cpu_ms_per_1000"] + details["db_cpu_ms_per_1000"]) / 1e6
    ceiling = (os.cpu_count() or 1) / cpu_per_event if cpu_per_event else 0.0
    report(BENCHMARK,
           f"POST /api/v1/usage/events, {row.details['events']:,} events in batches of "
           f"{BATCH:,} under gunicorn: API vs raw COPY",
           [row],
           notes=["the API authenticates each request's key, counts it against the key's "
                  "rate limit, parses and validates every event, writes it and its daily "
                  "rollups and commits; COPY writes usage_event only, from rows prepared in "
                  "advance, on one connection",
                  "server, PostgreSQL and clients share this machine's cores",
                  f"CPU per 1,000 events through the API: {details['web_cpu_ms_per_1000']} ms "
                  f"in gunicorn workers + {details['db_cpu_ms_per_1000']} ms in PostgreSQL "
                  f"backends (COPY: {details['copy_db_cpu_ms_per_1000']} ms in its backend); "
                  f"all {os.cpu_count()} cores on the API alone would give at most "
                  f"{ceiling:,.0f} events/s"],
           size={"events": row.details["events"], "batch": BATCH})


if __name__ == "__main__":
    main()
