"""The production runtime: health probes, metrics, JSON logs, the doctor, and rate
limits shared through Redis by the workers of a real gunicorn."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from api import keys
from portal import jobs, observability
from portal.audit import Actor
from portal.config import PROJECT_ROOT
from portal.extensions import db
from tenants.models import Tenant
from tenants.scoping import unscoped
from tests.conftest import needs_redis
from tests.smtp_server import SmtpServer, free_port

ACTOR = Actor.system("tests")
REDIS_URL = "redis://127.0.0.1:6379/13"


def _closed_port() -> int:
    return free_port()  # bound, then released: nothing listens there


def _tenant_key(app, world, scopes="usage:write,usage:read") -> tuple[dict, int, int]:
    """A bearer header for tenant alpha, the key's id and the tenant's id."""
    with app.app_context(), unscoped():
        tenant = db.session.get(Tenant, world.ids["a"])
        key, secret = keys.create_key(ACTOR, tenant, "runtime tests", scopes)
        return {"Authorization": f"Bearer {secret}"}, key.id, tenant.id


def _event(n: int, **extra) -> dict:
    stamp = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    return {"id": f"rt-{n}", "metric": "llm_tokens", "quantity": 10, "timestamp": stamp,
            **extra}


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a Prometheus text page, keyed by name and sorted labels."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _metrics(client, **kwargs) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics", **kwargs)
    assert response.status_code == 200, response.get_data(as_text=True)
    return _samples(response.get_data(as_text=True))


def _requests_total(samples, endpoint, status, method="GET") -> float:
    labels = tuple(sorted({"endpoint": endpoint, "method": method, "status": status}.items()))
    return samples.get(("billfold_http_requests_total", labels), 0.0)


def _events_total(samples, outcome) -> float:
    return samples.get(("billfold_usage_events_total", (("outcome", outcome),)), 0.0)


# -- health ---------------------------------------------------------------------------------

def test_liveness_answers_without_the_database(client, app, monkeypatch):
    monkeypatch.setattr(db.session, "execute", _refuse)
    live = client.get("/health/live")
    assert live.status_code == 200 and live.get_json() == {"status": "ok"}


def _refuse(*args, **kwargs):
    raise AssertionError("the liveness probe must not touch the database")


def test_readiness_checks_the_database_and_redis(client, app, monkeypatch):
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.get_json()["database"]["status"] == "ok"
    monkeypatch.setitem(app.config, "RATELIMIT_STORAGE_URI",
                        f"redis://:secret@127.0.0.1:{_closed_port()}/0")
    down = client.get("/health/ready")
    body = down.get_json()
    assert down.status_code == 503 and body["status"] == "unavailable"
    assert body["rate_limit_storage"]["status"] == "unreachable"
    assert "secret" not in down.get_data(as_text=True)
    assert body["database"]["status"] == "ok"
    # The contract's /health still answers as before.
    health = client.get("/health")
    assert health.status_code == 200 and health.get_json()["status"] == "ok"


def test_readiness_fails_when_the_database_is_away(client, app, monkeypatch):
    from sqlalchemy.exc import OperationalError

    def unreachable(*args, **kwargs):
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    monkeypatch.setattr(db.session, "execute", unreachable)
    down = client.get("/health/ready")
    assert down.status_code == 503
    assert down.get_json()["database"]["status"] == "unreachable"


# -- request ids, metrics -------------------------------------------------------------------

def test_each_response_carries_its_request_id(client):
    generated = client.get("/health/live").headers["X-Request-Id"]
    assert len(generated) == 32
    assert client.get("/health/live").headers["X-Request-Id"] != generated
    echoed = client.get("/health/live", headers={"X-Request-Id": "lb-1234"})
    assert echoed.headers["X-Request-Id"] == "lb-1234"
    # One that could not be stored in an audit row or logged as it is gets replaced.
    for unusable in ("x" * 65, "id with spaces", "evil\u2028line"):
        replaced = client.get("/health/live", headers={"X-Request-Id": unusable})
        assert len(replaced.headers["X-Request-Id"]) == 32


def test_metrics_are_for_this_machine_or_the_token_holder(client, app, monkeypatch):
    remote = {"REMOTE_ADDR": "10.1.2.3"}
    assert client.get("/metrics", environ_base=remote).status_code == 403
    # A request relayed by a proxy on this machine is not a local one.
    assert client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 403
    monkeypatch.setitem(app.config, "METRICS_TOKEN", "scrape-token")
    bearer = {"Authorization": "Bearer scrape-token"}
    assert client.get("/metrics", environ_base=remote, headers=bearer).status_code == 200
    wrong = {"Authorization": "Bearer other"}
    assert client.get("/metrics", environ_base=remote, headers=wrong).status_code == 403
    monkeypatch.setitem(app.config, "METRICS_ALLOW_LOCAL", False)
    assert client.get("/metrics").status_code == 403
    local = client.get("/metrics", headers=bearer)
    assert local.status_code == 200 and local.mimetype == "text/plain"


def test_metrics_count_requests_by_route_rule(client):
    before = _metrics(client)
    client.get("/health/live")
    client.get("/no/such/page/42")
    client.get("/no/such/page/43")
    after = _metrics(client)
    assert _requests_total(after, "/health/live", "200") == \
        _requests_total(before, "/health/live", "200") + 1
    assert _requests_total(after, observability.UNMATCHED_ROUTE, "404") == \
        _requests_total(before, observability.UNMATCHED_ROUTE, "404") + 2
    assert not any("/no/such" in str(labels) for _, labels in after)
    bucket = ("billfold_http_request_duration_seconds_count",
              (("endpoint", "/health/live"), ("method", "GET"), ("status", "200")))
    assert after[bucket] == before.get(bucket, 0) + 1


def test_metrics_count_ingested_events_by_outcome(client, app, world, tmp_path):
    headers, _, _ = _tenant_key(app, world)
    before = _metrics(client)
    ok = client.post("/api/v1/usage/events", headers=headers,
                     json={"events": [_event(1), _event(2), _event(1)]})
    assert ok.get_json() == {"accepted": 2, "duplicates": 1}
    bad = client.post("/api/v1/usage/events", headers=headers,
                      json={"events": [_event(3), _event(4, metric="gpu_hours")]})
    assert bad.status_code == 422
    # The CLI goes through the same ingestion, so it is counted too.
    lines = tmp_path / "events.jsonl"
    lines.write_text("\n".join(json.dumps(_event(n)) for n in (2, 5, 6)) + "\n")
    result = app.test_cli_runner().invoke(args=["billfold", "ingest", str(lines),
                                                "--tenant", "alpha"])
    assert result.exit_code == 0, result.output
    after = _metrics(client)
    assert _events_total(after, "accepted") - _events_total(before, "accepted") == 4
    assert _events_total(after, "duplicate") - _events_total(before, "duplicate") == 2
    assert _events_total(after, "rejected") - _events_total(before, "rejected") == 2
    ingest = _requests_total(after, "/api/v1/usage/events", "200", "POST") - \
        _requests_total(before, "/api/v1/usage/events", "200", "POST")
    assert ingest == 1


def _job_total(job: str, outcome: str) -> float:
    return observability.REGISTRY.get_sample_value(
        "billfold_jobs_total", {"job": job, "outcome": outcome}) or 0.0


def test_job_outcomes_are_counted(app):
    from portal import tasks

    counts = (_job_total("test.job", "success"), _job_total("test.job", "failure"))
    assert observability.run_observed("test.job", lambda x: x * 2, 21) == 42
    with pytest.raises(ZeroDivisionError):
        observability.run_observed("test.job", lambda: 1 / 0)
    assert (_job_total("test.job", "success"), _job_total("test.job", "failure")) == (
        counts[0] + 1, counts[1] + 1)
    # Celery tasks are counted from Celery's signals; a deferred job under its own name.
    if "test.runtime-noop" not in jobs.TASKS:
        jobs.task("test.runtime-noop")(lambda *args: None)
    before = (_job_total("billfold.mark_overdue", "success"),
              _job_total("test.runtime-noop", "success"))
    with app.app_context():
        tasks.mark_overdue.delay().get()
        tasks.run_job.delay("test.runtime-noop", 1).get()
    assert _job_total("billfold.mark_overdue", "success") == before[0] + 1
    assert _job_total("test.runtime-noop", "success") == before[1] + 1
    # A worker's tracer signals failures and retries (eager runs raise to the caller
    # instead); each is counted under the deferred job's name.
    from celery import signals
    from celery.app.task import Context

    before = (_job_total("test.runtime-noop", "retry"),
              _job_total("test.runtime-noop", "failure"))
    signals.task_retry.send(sender=tasks.run_job, request=Context(args=["test.runtime-noop"]),
                            reason=OSError("peer away"), einfo=None)
    signals.task_failure.send(sender=tasks.run_job, task_id="t1", exception=ValueError(),
                              args=["test.runtime-noop"], kwargs={}, traceback=None,
                              einfo=None)
    assert (_job_total("test.runtime-noop", "retry"),
            _job_total("test.runtime-noop", "failure")) == (before[0] + 1, before[1] + 1)


# -- logs -----------------------------------------------------------------------------------

@pytest.fixture
def json_app(app):
    """The portal logging JSON, on the suite's database; text logging restored after."""
    from portal import create_app
    from tests.conftest import config_for

    yield create_app(config_for(app.config["DATABASE_URL"], LOG_FORMAT="json"))
    observability.configure_logging("text")


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_json_logs_carry_request_tenant_and_user(json_app, world, capsys):
    headers, key_id, tenant_id = _tenant_key(json_app, world)
    capsys.readouterr()
    response = json_app.test_client().get("/api/v1/usage/summary", headers=headers)
    assert response.status_code == 200
    lines = _json_lines(capsys.readouterr().err)
    access = [line for line in lines if line["logger"] == observability.ACCESS_LOGGER]
    assert len(access) == 1, lines
    line = access[0]
    assert {"time", "level", "logger", "message", "request_id", "tenant", "user", "method",
            "path", "status", "duration_ms"} <= set(line)
    assert line["request_id"] == response.headers["X-Request-Id"]
    assert (line["tenant"], line["user"]) == (str(tenant_id), f"api-key:{key_id}")
    assert (line["method"], line["path"], line["status"]) == ("GET", "/api/v1/usage/summary",
                                                              200)
    assert line["level"] == "INFO" and line["time"].endswith("Z")
    assert isinstance(line["duration_ms"], float)


def test_log_format_is_json_or_text_and_nothing_else(app):
    from portal import create_app
    from tests.conftest import config_for

    with pytest.raises(ValueError, match="json or text"):
        create_app(config_for(app.config["DATABASE_URL"], LOG_FORMAT="xml"))


# -- doctor ---------------------------------------------------------------------------------

def _doctor(app):
    return app.test_cli_runner().invoke(args=["billfold", "doctor"])


@needs_redis
def test_doctor_passes_a_good_production_configuration(app, monkeypatch):
    with SmtpServer() as smtp:
        for name, value in {
            "PRODUCTION": True, "SECRET_KEY": "k" * 48, "RATELIMIT_ENABLED": True,
            "RATELIMIT_STORAGE_URI": REDIS_URL, "CELERY_BROKER_URL": REDIS_URL,
            "JOBS_EAGER": False, "MAIL_SERVER": "127.0.0.1", "MAIL_PORT": smtp.port,
            "STRIPE_SECRET_KEY": "sk_test_doctor", "STRIPE_WEBHOOK_SECRET": "whsec_doctor",
            "STRIPE_API_BASE": None,
        }.items():
            monkeypatch.setitem(app.config, name, value)
        result = _doctor(app)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith(("ok", "FAIL"))]
    assert len(lines) == 10 and all(line.startswith("ok ") for line in lines), result.output
    assert "All 10 checks passed." in result.output


def test_doctor_says_what_is_wrong_and_exits_1(app, monkeypatch):
    for name, value in {
        "PRODUCTION": True, "SECRET_KEY": "billfold-development-secret",
        "RATELIMIT_ENABLED": True,
        "RATELIMIT_STORAGE_URI": f"redis://127.0.0.1:{_closed_port()}/0",
        "CELERY_BROKER_URL": None, "MAIL_SERVER": "127.0.0.1", "MAIL_PORT": _closed_port(),
        "STRIPE_SECRET_KEY": None, "STRIPE_WEBHOOK_SECRET": "not-a-secret",
    }.items():
        monkeypatch.setitem(app.config, name, value)
    result = _doctor(app)
    assert result.exit_code == 1
    out = result.output
    failed = {line.split(":")[0].split(None, 1)[1] for line in out.splitlines()
              if line.startswith("FAIL")}
    assert failed == {"secret key", "rate-limit storage", "celery broker", "smtp", "stripe"}
    assert "BILLFOLD_SECRET_KEY is the development default" in out
    assert "does not answer" in out and "BILLFOLD_RATELIMIT_STORAGE_URI" in out
    assert "set BILLFOLD_CELERY_BROKER_URL=redis://" in out
    assert "BILLFOLD_STRIPE_SECRET_KEY is not set" in out and "whsec_" in out
    assert "5 of 10 checks failed." in out
    # database, migrations, roles, read replica (none), pdf
    assert out.count("\nok ") + out.startswith("ok ") == 5


def test_doctor_checks_the_read_replica(app, tmp_path, monkeypatch):
    from sqlalchemy import create_engine

    from portal.doctor import check_replica

    assert check_replica(app.config).ok  # none configured: the primary serves reports
    monkeypatch.setitem(app.config, "SQLALCHEMY_BINDS",
                        {"replica": f"postgresql://postgres@127.0.0.1:{_closed_port()}/x"})
    down = check_replica(app.config)
    assert not down.ok and "does not answer" in down.message
    assert "BILLFOLD_DATABASE_REPLICA_URL" in down.message
    empty = tmp_path / "empty.db"
    create_engine(f"sqlite:///{empty}").connect().close()
    monkeypatch.setitem(app.config, "SQLALCHEMY_BINDS", {"replica": f"sqlite:///{empty}"})
    behind = check_replica(app.config)
    assert not behind.ok and "is at no schema" in behind.message
    monkeypatch.setitem(app.config, "SQLALCHEMY_BINDS",
                        {"replica": app.config["SQLALCHEMY_DATABASE_URI"]})
    same = check_replica(app.config)
    assert same.ok and "at head" in same.message


def test_doctor_reports_an_unmigrated_database(app, tmp_path, monkeypatch):
    from sqlalchemy import create_engine

    empty = tmp_path / "empty.db"
    create_engine(f"sqlite:///{empty}").connect().close()
    monkeypatch.setitem(app.config, "SQLALCHEMY_DATABASE_URI", f"sqlite:///{empty}")
    result = _doctor(app)
    assert result.exit_code == 1
    assert "the database has no schema: run `flask --app portal db upgrade`" in result.output
    monkeypatch.setitem(app.config, "SQLALCHEMY_DATABASE_URI", f"sqlite:///{tmp_path}/none.db")
    missing = _doctor(app)
    assert missing.exit_code == 1 and "no SQLite database file at" in missing.output
    assert not (tmp_path / "none.db").exists()


# -- gunicorn -------------------------------------------------------------------------------

START_TIMEOUT = 60  # seconds for gunicorn's workers to answer (importing the app)


def _gunicorn_env(database_url: str, port: int, metrics_dir: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("BILLFOLD_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({
        "BILLFOLD_DATABASE_URL": database_url, "BILLFOLD_SECRET_KEY": "s" * 48,
        "BILLFOLD_WEB_BIND": f"127.0.0.1:{port}", "BILLFOLD_WEB_WORKERS": "2",
        "BILLFOLD_RATELIMIT_STORAGE_URI": REDIS_URL, "BILLFOLD_LOG_FORMAT": "json",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), **extra,
    })
    return env


class Gunicorn:
    """``gunicorn -c gunicorn.conf.py`` in its own session, logging to a file; always
    stopped on exit (SIGTERM, then SIGKILL to its process group)."""

    def __init__(self, env: dict, log_path: Path):
        self.env, self.log_path = env, log_path
        self.url = "http://" + env["BILLFOLD_WEB_BIND"]

    def __enter__(self) -> Gunicorn:
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in __exit__
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(PROJECT_ROOT / "gunicorn.conf.py")],
            cwd=PROJECT_ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        try:
            self._wait_until_live()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_until_live(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"gunicorn exited ({self.process.returncode}):\n"
                                     + self.log_path.read_text())
            try:
                if requests.get(self.url + "/health/live", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError("gunicorn did not answer in time:\n" + self.log_path.read_text())

    def lines(self) -> list[dict]:
        return _json_lines(self.log_path.read_text())

    def __exit__(self, *exc_info) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.log.close()


@needs_redis
def test_rate_limits_are_shared_by_two_gunicorn_workers_through_redis(app, world, tmp_path):
    """A limit of 3 per minute allows exactly 3 requests, whichever worker answers."""
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    headers, _, _ = _tenant_key(app, world)
    env = _gunicorn_env(app.config["DATABASE_URL"], free_port(), tmp_path / "metrics",
                        BILLFOLD_API_RATE_LIMIT="3 per minute",
                        # Sync workers take one request at a time, so concurrent
                        # requests spread over both (a threaded one could take them all).
                        BILLFOLD_WEB_THREADS="1")
    (tmp_path / "metrics").mkdir()
    url_path = "/api/v1/usage/summary"
    with Gunicorn(env, tmp_path / "gunicorn.log") as server:
        def call(_):
            response = requests.get(server.url + url_path, headers=headers, timeout=30)
            return response.status_code, response.headers.get("X-Request-Id")

        statuses: list[int] = []
        pids: set[int] = set()
        with ThreadPoolExecutor(max_workers=8) as pool:
            # Bursts of concurrent requests until both workers answered (the second
            # may still be importing the app when the first answers).
            for _ in range(20):
                results = list(pool.map(call, range(8)))
                statuses += [status for status, _ in results]
                assert all(request_id for _, request_id in results)
                pids = {line["pid"] for line in server.lines()
                        if line.get("logger") == observability.ACCESS_LOGGER
                        and line.get("path") == url_path}
                if len(pids) == 2:
                    break
                time.sleep(0.5)
        metrics = requests.get(server.url + "/metrics", timeout=10).text
    assert len(pids) == 2, "both workers should have answered"
    assert statuses.count(200) == 3, statuses
    assert statuses.count(429) == len(statuses) - 3
    # The metrics of both workers are added up.
    samples = _samples(metrics)
    assert _requests_total(samples, url_path, "200") == 3
    assert _requests_total(samples, url_path, "429") == len(statuses) - 3


# -- make run-prod --------------------------------------------------------------------------

def test_run_prod_refuses_what_it_cannot_serve(monkeypatch, capsys):
    from portal import prod

    for name in [n for n in os.environ if n.startswith("BILLFOLD_")]:
        monkeypatch.delenv(name)
    assert prod.main([]) == 1
    err = capsys.readouterr().err
    assert "BILLFOLD_DATABASE_URL is not set" in err and "BILLFOLD_SECRET_KEY" in err
    assert "nothing was started" in err
    _, errors = prod.production_environment({
        "BILLFOLD_DATABASE_URL": "sqlite:///x.db", "BILLFOLD_SECRET_KEY": "k" * 40,
        "BILLFOLD_RATELIMIT_STORAGE_URI": "memory://", "BILLFOLD_WEB_WORKERS": "two"})
    assert len(errors) == 3
    assert "PostgreSQL" in errors[0] and "memory://" in errors[1] and "WEB_WORKERS" in errors[2]
    env, errors = prod.production_environment({
        "BILLFOLD_DATABASE_URL": "postgresql://u@db/billfold", "BILLFOLD_SECRET_KEY": "k" * 40})
    assert errors == []
    assert (env["BILLFOLD_JOBS_EAGER"], env["BILLFOLD_PRODUCTION"], env["BILLFOLD_LOG_FORMAT"]) \
        == ("false", "true", "json")
    assert env["BILLFOLD_RATELIMIT_STORAGE_URI"].startswith("redis://")
    assert env["BILLFOLD_CELERY_BROKER_URL"].startswith("redis://")


def test_run_prod_checks_the_database_and_redis_before_starting(monkeypatch, capsys):
    from portal import prod

    for name in [n for n in os.environ if n.startswith("BILLFOLD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("BILLFOLD_DATABASE_URL",
                       f"postgresql://postgres@127.0.0.1:{_closed_port()}/billfold")
    monkeypatch.setenv("BILLFOLD_SECRET_KEY", "k" * 40)
    monkeypatch.setenv("BILLFOLD_RATELIMIT_STORAGE_URI", f"redis://127.0.0.1:{_closed_port()}/0")
    assert prod.main([]) == 1
    err = capsys.readouterr().err
    assert "FAIL  database:" in err and "FAIL  rate-limit storage:" in err
    assert "nothing was started" in err


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@needs_redis
def test_run_prod_migrates_starts_everything_and_stops_on_ctrl_c(app, db_kind, tmp_path):
    """`python -m portal.prod` on PostgreSQL: migrates, serves, runs a Celery worker and
    beat, and stops all three on SIGINT (Ctrl-C)."""
    import redis

    if db_kind != "postgresql":
        pytest.skip("run-prod serves PostgreSQL only")
    redis.Redis.from_url(REDIS_URL).flushdb()
    port = free_port()
    env = _gunicorn_env(app.config["DATABASE_URL"], port, tmp_path / "metrics",
                        BILLFOLD_CELERY_BROKER_URL=REDIS_URL,
                        BILLFOLD_BEAT_SCHEDULE_FILE=str(tmp_path / "beat-schedule"),
                        BILLFOLD_CELERY_CONCURRENCY="1")
    log_path = tmp_path / "run-prod.log"
    with open(log_path, "w") as log:
        supervisor = subprocess.Popen([sys.executable, "-m", "portal.prod"], cwd=PROJECT_ROOT,
                                      env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
    children: list[int] = []
    try:
        deadline = time.monotonic() + 120
        ready = None
        while time.monotonic() < deadline and supervisor.poll() is None:
            children = _children(supervisor.pid) or children
            try:
                ready = requests.get(f"http://127.0.0.1:{port}/health/ready", timeout=2)
                # The Celery worker logs "<name> ready." once it takes tasks.
                if ready.status_code == 200 and " ready." in log_path.read_text():
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        output = log_path.read_text()
        assert ready is not None and ready.status_code == 200, output
        assert ready.json()["broker"]["status"] == "ok"
        assert "migrating: flask db upgrade, then flask billfold init" in output
        assert "Roles and permissions are in place." in output
        assert len(children) == 3, output  # gunicorn, the Celery worker, beat
        supervisor.send_signal(signal.SIGINT)
        assert supervisor.wait(timeout=60) == 0, log_path.read_text()
        for pid in children:
            assert not os.path.exists(f"/proc/{pid}") or _zombie(pid), pid
    finally:
        if supervisor.poll() is None:
            supervisor.send_signal(signal.SIGINT)
            try:
                supervisor.wait(timeout=60)
            except subprocess.TimeoutExpired:
                supervisor.kill()
        for pid in children:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
