"""Login attempts are rate limited per client address (the suite's app runs with
limits off, so this builds one with them on, on the same database)."""

from __future__ import annotations

from portal import create_app
from tests.conftest import PASSWORD, config_for


def test_login_attempts_past_the_limit_are_refused(app, world):
    limited = create_app(config_for(app.config["DATABASE_URL"], RATELIMIT_ENABLED=True,
                                    AUTH_RATE_LIMIT="3 per 20 second"))
    client = limited.test_client()
    statuses = [client.post("/login/", data={"username": "alpha-admin",
                                             "password": "wrong"}).status_code
                for _ in range(3)]
    assert 429 not in statuses
    refused = client.post("/login/", data={"username": "alpha-admin", "password": PASSWORD})
    assert refused.status_code == 429  # even the right password waits out the window
    other = limited.test_client()
    ok = other.post("/login/", data={"username": "alpha-admin", "password": PASSWORD},
                    environ_base={"REMOTE_ADDR": "10.0.0.9"})  # another client address
    assert ok.status_code == 302
