"""Property tests (hypothesis): validating a batch through the fast path for the usual
event gives exactly what the full checks alone give, for valid and invalid events alike:
the same clean events, or the same errors (index, field and message), or the same
exception."""

from __future__ import annotations

import datetime as dt
import json
from collections import OrderedDict
from decimal import Decimal
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from plans import metering
from plans.metering import BatchRejected, CleanEvent
from plans.metrics import METRICS, SERVICES

NOW = dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC)
# Fixed offsets (the fast path adds the offset) and zones with changes (it converts).
ZONES = ["UTC", "Etc/GMT+5", "Etc/GMT-14", "America/New_York", "Asia/Kathmandu",
         "Australia/Lord_Howe"]
OFFSETS = [dt.UTC, dt.timezone(dt.timedelta(hours=2)),
           dt.timezone(dt.timedelta(hours=-9, minutes=-30)),
           dt.timezone(dt.timedelta(hours=5, minutes=45, seconds=30)),
           ZoneInfo("America/New_York"), ZoneInfo("Europe/Dublin")]


def full_checks_only(events, zone, now):
    """The validation before the fast path: every event through ``_clean``."""
    latest = now + metering.MAX_FUTURE
    errors = []
    clean = [metering._clean(i, raw, zone, latest, errors) for i, raw in enumerate(events)]
    if errors:
        raise BatchRejected(errors)
    return clean


def outcome(validate, events, zone):
    try:
        return "clean", validate(events, zone, NOW)
    except BatchRejected as exc:
        return "rejected", [e.as_dict() for e in exc.errors]
    except Exception as exc:  # noqa: BLE001 - compared below, type and text
        return "raised", type(exc), str(exc)


moments = st.datetimes(min_value=dt.datetime(1971, 1, 1), max_value=dt.datetime(2027, 1, 1))
aware = st.builds(lambda m, tz: m.replace(tzinfo=tz), moments, st.sampled_from(OFFSETS))
# Around NOW, where the five-minute limit on future timestamps decides.
near_now = st.integers(-600, 600).map(lambda s: NOW + dt.timedelta(seconds=s))

timestamps = st.one_of(
    aware, near_now, moments,
    aware.map(dt.datetime.isoformat),
    aware.map(lambda m: m.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")),
    near_now.map(lambda m: m.isoformat().replace("+00:00", "Z")),
    moments.map(dt.datetime.isoformat),
    st.sampled_from(["yesterday", "", " 2026-11-03T15:00:00Z ", "2026-11-03 15:00:00+01:00",
                     "2026-11-03T15:00:00z", "2026-11-03T15:00Z", "20261103T150000Z",
                     "2026-11-03", "2026-11-03T15:00:00+25:00"]),
    st.integers(), st.none(), st.just(dt.date(2026, 11, 3)),
)

quantities = st.one_of(
    st.integers(0, 10**6), st.integers(-10, 10**13),
    st.sampled_from([0, 10**12, 10**12 + 1, -1, True, False, 1.5, 0.0]),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.decimals(min_value=0, max_value=10**6, places=6),
    st.decimals(min_value=0, max_value=10**6, places=6).map(str),
    st.sampled_from(["12.5", " 7 ", "0.000001", "0.0000001", "1.50000000", "1e3", "1E-7",
                     "abc", "", "-1", "+3", "1_000", "NaN", "Infinity", "\u0661\u0662",
                     "1000000000000", "1000000000000.000001"]),
    st.none(), st.lists(st.integers(), max_size=1),
)

texts = st.text(max_size=10)
properties = st.one_of(
    st.none(),
    st.dictionaries(texts, texts, max_size=4),
    st.dictionaries(texts, st.one_of(st.integers(), st.booleans(), st.none(), texts,
                                     st.decimals(allow_nan=False, places=2),
                                     st.floats(allow_nan=True),
                                     st.lists(st.integers(), max_size=2),
                                     st.dictionaries(texts, texts, max_size=2)), max_size=3),
    st.dictionaries(st.one_of(st.integers(), texts), texts, min_size=2, max_size=3),
    st.sampled_from([{"big": "x" * 4080}, {"big": "x" * 4100}, {"big": "\u00e9" * 600},
                     {"big": "\u00e9" * 700}, {"a": b"bytes"}]),
    st.builds(OrderedDict, st.dictionaries(texts, texts, max_size=2)),
    st.sampled_from(["not an object", ["a"], 7]),
)

ids = st.one_of(
    st.integers(0, 10**9).map(lambda n: f"evt-{n}"),
    st.text(max_size=140), st.integers(), st.none(), st.just(["a"]),
    st.sampled_from(["  padded  ", " ", "", "x" * 128, "x" * 129, " " + "x" * 127 + " "]),
)
metrics = st.one_of(st.sampled_from(list(METRICS)),
                    st.sampled_from(["gpu_hours", "", "LLM_TOKENS", " llm_tokens"]),
                    st.none(), st.integers())
services = st.one_of(st.sampled_from(list(SERVICES)),
                     st.sampled_from(["nope", "", "AI_SERVICE"]), st.integers())
users = st.one_of(st.sampled_from(["user-01", "", " u "]), st.integers(),
                  st.text(max_size=130), st.just("u" * 129), st.just(["u"]))

# Values just inside and just outside each limit.
EDGE_VALUES = {
    "id": ["x" * 128, "x" * 129, " " + "x" * 127, "x" * 127 + "  ", " \t "],
    "metric": list(METRICS),
    "quantity": [10**12, 10**12 + 1, "1000000000000", "1000000000000.000001",
                 "999999999999.999999", "0.000001", "0.0000001", "0.1000000",
                 Decimal("0.0000010"), Decimal("-0"), -1, 0],
    "timestamp": [NOW + metering.MAX_FUTURE + dt.timedelta(microseconds=s)
                  for s in range(-2, 3)],
    "service": list(SERVICES),
    "user": ["u" * 128, "u" * 129, 0, 7],
    # Stored as ASCII JSON: {"big":"…"} is 10 characters more than the value's escapes.
    "properties": [{"big": "x" * 4086}, {"big": "x" * 4087},
                   {"big": "\u00e9" * 681}, {"big": "\u00e9" * 682}],
}
EDGES = {name: st.sampled_from(values) for name, values in EDGE_VALUES.items()}
FIELDS = {"id": ids, "metric": metrics, "quantity": quantities, "timestamp": timestamps,
          "service": services, "user": users, "properties": properties}
REQUIRED = ("id", "metric", "quantity", "timestamp")


@st.composite
def any_event(draw):
    """Any event a client could send: each field present or not, valid or not, and
    now and then an unknown field or something that is no object at all."""
    shape = draw(st.integers(0, 19))
    if shape == 0:
        return draw(st.sampled_from(["not an object", None, 3, ["id", "x"]]))
    event = {name: draw(values) for name, values in FIELDS.items()
             if draw(st.integers(0, 9)) < (9 if name in REQUIRED else 5)}
    if shape == 1:
        event["colour"] = "red"
    if shape == 2:
        return OrderedDict(event)
    return event


@st.composite
def usual_event(draw):
    """An event as a metering client sends it: valid, with the usual field types."""
    event = {"id": f"evt-{draw(st.integers(0, 10**9))}",
             "metric": draw(st.sampled_from(list(METRICS))),
             "quantity": draw(st.one_of(
                 st.integers(0, 10**6),
                 st.decimals(min_value=0, max_value=10**6, places=3).map(str),
                 st.decimals(min_value=0, max_value=10**6, places=2))),
             "timestamp": draw(st.one_of(
                 near_now.filter(lambda m: m <= NOW),
                 aware.filter(lambda m: m < NOW),
                 aware.filter(lambda m: m < NOW).map(
                     lambda m: m.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"))))}
    if draw(st.booleans()):
        event["service"] = draw(st.sampled_from(list(SERVICES)))
    if draw(st.booleans()):
        event["user"] = draw(st.sampled_from(["user-01", "user-02", ""]))
    if draw(st.booleans()):
        event["properties"] = draw(st.dictionaries(texts, texts, max_size=3))
    return event


@st.composite
def nearly_usual_event(draw):
    """A usual event with one field set to any value, removed, or an unknown one added:
    the events on the edge between the fast path and the full checks."""
    event = draw(usual_event())
    name = draw(st.sampled_from([*FIELDS, "colour"]))
    if name == "colour":
        event[name] = "red"
    elif draw(st.integers(0, 4)) == 0:
        event.pop(name, None)
    else:
        event[name] = draw(FIELDS[name] | EDGES[name])
    return event


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(usual_event(), nearly_usual_event(), any_event()),
                min_size=1, max_size=6),
       st.sampled_from(ZONES))
def test_the_fast_path_gives_what_the_full_checks_give(events, zone_name):
    zone = ZoneInfo(zone_name)
    expected = outcome(full_checks_only, events, zone)
    assert outcome(metering._validate, events, zone) == expected
    if expected[0] == "clean":
        assert all(type(e) is CleanEvent for e in expected[1])


@settings(max_examples=100, deadline=None)
@given(st.lists(usual_event(), min_size=1, max_size=20), st.sampled_from(ZONES))
def test_usual_events_take_the_fast_path(events, zone_name):
    zone = ZoneInfo(zone_name)
    latest = NOW + metering.MAX_FUTURE
    fast = [metering._clean_usual(raw, zone, zone.utcoffset(None), latest) for raw in events]
    assert fast == full_checks_only(events, zone, NOW)


def test_each_limit_is_kept_on_both_sides():
    base = {"id": "evt-1", "metric": "storage_gb", "quantity": 3, "service": "ml_service",
            "user": "user-01", "properties": {"region": "eu"}, "timestamp": NOW}
    for name, values in EDGE_VALUES.items():
        for value in values:
            for zone_name in ZONES:
                zone = ZoneInfo(zone_name)
                events = [{**base, name: value}]
                assert outcome(metering._validate, events, zone) == outcome(
                    full_checks_only, events, zone), (name, value, zone_name)


def test_one_bad_event_among_usual_ones_is_reported_as_before():
    zone = ZoneInfo("America/New_York")
    events = [{"id": f"e{i}", "metric": "llm_tokens", "quantity": 5,
               "timestamp": "2026-11-03T15:00:00Z"} for i in range(5)]
    events[3] = {"id": "e3", "metric": "llm_tokens", "quantity": -5, "timestamp": "2026-11-03",
                 "colour": "red"}
    expected = outcome(full_checks_only, events, zone)
    assert expected[0] == "rejected"
    assert {(e["index"], e["field"]) for e in expected[1]} == {
        (3, "colour"), (3, "quantity"), (3, "timestamp")}
    assert outcome(metering._validate, events, zone) == expected


def stored_json(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def encoded(value):
    try:
        return metering._encode_properties(value)
    except Exception as exc:  # noqa: BLE001 - compared below
        return type(exc)


def dumped(value):
    try:
        return stored_json(value)
    except Exception as exc:  # noqa: BLE001 - compared below
        return type(exc)


@given(st.one_of(
    st.dictionaries(st.text(), st.text(), max_size=6),
    st.dictionaries(st.text(max_size=4), st.one_of(st.text(max_size=4), st.integers(),
                                                   st.decimals(allow_nan=False),
                                                   st.none(), st.booleans()), max_size=4),
    st.dictionaries(st.one_of(st.text(max_size=3), st.integers()), st.text(max_size=3),
                    max_size=4),
))
def test_properties_are_stored_as_json_dumps_writes_them(value):
    assert encoded(value) == dumped(value)


def test_properties_edge_cases_match_json_dumps():
    for value in ({}, {"b": "2", "a": "1"}, {"q": '"\\\n\t\u2028\x00'}, {"\u00e9": "\U0001f600"},
                  OrderedDict(b="1", a="2"), {"a": Decimal("1.50")}, {1: "a", "b": "c"}):
        assert encoded(value) == dumped(value)
