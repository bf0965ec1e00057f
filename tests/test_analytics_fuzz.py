"""Property-based tests (Hypothesis) for the analytics endpoint and batch, on the real
MariaDB and Redis:
- whatever body reaches the endpoint, the answer is 2xx or 4xx, never 5xx (503 only as
  deliberate back-pressure), and a request is written whole or not at all;
- whatever entries reach the stream (valid events, hand-written junk, entries the database
  itself refuses), the batch never stops, counts every valid event exactly once and
  quarantines every other entry.
Example counts: tests/hypothesis_profiles.py (HYPOTHESIS_PROFILE=long for a longer run)."""

import json
from collections import Counter

import pytest
from django.test import Client
from hypothesis import given
from hypothesis import strategies as st

import tests.hypothesis_profiles  # noqa: F401 - registers and loads the profile
from analytics import known_news, validation
from analytics.ingest import STREAM_KEY, record_events
from analytics.models import QuarantinedEvent, RawEvent
from analytics.services import GROUP, analytics_process_batch
from news.factories import NewsFactory
from news.models import News
from nextevent.redis import get_redis

pytestmark = pytest.mark.django_db
URL = "/api/analytics/events"
TYPES = ["view", "share", "like"]
TOTALS = {"view": "view_count", "share": "share_count", "like": "like_count"}

# ---------------------------------------------------------------- strategies

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats() | st.text(max_size=12) | st.sampled_from(["\ud800", "\x00", " ", "view", "1", "NaN"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=12)


@st.composite
def nested(draw, low=1, high=45, leaf=scalars):
    value = draw(leaf)
    for _ in range(draw(st.integers(low, high))):
        value = draw(st.sampled_from(["list", "dict"])) == "list" and [value] or {"k": value}
    return {"m": value}


def events(news_ids):
    ids = st.sampled_from(news_ids) | st.integers(min_value=1, max_value=max(news_ids) + 5) | json_values
    return st.fixed_dictionaries(
        {"news_id": ids, "event_type": st.sampled_from(TYPES) | json_values},
        optional={"user_id": st.text(max_size=70) | st.integers() | json_values,
                  "metadata": st.dictionaries(st.text(max_size=6), json_values, max_size=4) | nested() | json_values,
                  "extra": json_values})


safe_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=10)
safe_json = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
                         | st.floats(allow_nan=False, allow_infinity=False) | safe_text,
                         lambda inner: st.lists(inner, max_size=3) | st.dictionaries(safe_text, inner, max_size=3),
                         max_leaves=8)


def valid_events(news_ids):
    """Events the Python API accepts, for news items that exist."""
    user = (st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=64).filter(
        lambda u: u == u.strip()) | st.integers(-(2**63), 2**63 - 1))
    return st.fixed_dictionaries(
        {"news_id": st.sampled_from(news_ids), "event_type": st.sampled_from(TYPES)},
        optional={"user_id": user, "metadata": st.dictionaries(safe_text, safe_json, max_size=4)})


def bodies(news_ids):
    event = events(news_ids) | valid_events(news_ids)
    documents = (event | st.fixed_dictionaries({"events": st.lists(event, max_size=8)}) | st.lists(event, max_size=8)
                 | json_values)
    as_text = documents.map(lambda d: json.dumps(d))  # NaN and Infinity included
    return (as_text.map(str.encode) | as_text.map(lambda t: t.encode("utf-8", "surrogatepass"))
            | st.binary(max_size=64) | st.just(b"[" * 5000 + b"]" * 5000))


content_types = st.sampled_from(["application/json"] * 6 + ["text/plain", "application/json; charset=utf-16", ""])


def stream():
    return get_redis().xrange(STREAM_KEY)


def expected_events(body: bytes, existing: set[int]) -> tuple[list, int]:
    """For an accepted body: the (news id, type) pairs that must have been buffered, in
    order, and how many events it held (the rest were for unknown news)."""
    data = json.loads(body.decode("utf-8"))
    batch = [data] if isinstance(data, dict) and "events" not in data else (
        data["events"] if isinstance(data, dict) else data)
    return [(e["news_id"], e["event_type"]) for e in batch if e["news_id"] in existing], len(batch)


def news_totals():
    return {(n.pk, t): getattr(n, f) for n in News.objects.all() for t, f in TOTALS.items()}


# ---------------------------------------------------------------- the endpoint


@pytest.mark.parametrize("buffer_max", [0, 12])
def test_any_request_gets_2xx_or_4xx_is_all_or_nothing_and_the_batch_counts_it_exactly(settings, buffer_max):
    settings.ANALYTICS_RATE_REQUESTS = 0
    settings.ANALYTICS_RATE_EVENTS = 0
    settings.ANALYTICS_BUFFER_MAX_EVENTS = buffer_max  # 12: small enough for batches to meet it
    known_news.forget()
    news_ids = [NewsFactory().pk for _ in range(3)]
    client = Client()
    accepted: Counter = Counter()
    statuses: Counter = Counter()

    @given(body=bodies(news_ids), content_type=content_types, drain=st.booleans())
    def run(body, content_type, drain):
        before = stream()
        # generic(): the body goes as these bytes (post() would re-encode it to the charset).
        response = client.generic("POST", URL, data=body, content_type=content_type)
        status = response.status_code
        statuses[status] += 1
        after = stream()
        if status == 202:
            got = response.json()
            new = after[len(before):]
            assert after[:len(before)] == before and len(new) == got["accepted"]
            want, total = expected_events(body, set(news_ids))
            assert [(int(f[b"n"]), f[b"t"].decode()) for _, f in new] == want
            assert got["dropped_unknown_news"] == total - len(want)
            accepted.update(want)
        else:
            assert after == before, "a refused request wrote something"
            if status == 503:
                assert buffer_max and response["Retry-After"] and "buffer holds" in response.json()["error"]
            else:
                assert 400 <= status < 500, (status, response.content[:300])
                assert response.json()["error"]
        if drain:
            analytics_process_batch(reason="fuzz")

    run()
    analytics_process_batch(reason="fuzz")
    assert not QuarantinedEvent.objects.exists(), list(QuarantinedEvent.objects.values_list("error", flat=True))
    want = {(n, t): accepted[(n, t)] for n in news_ids for t in TYPES}
    assert news_totals() == want
    assert RawEvent.objects.count() == sum(accepted.values())
    assert get_redis().xlen(STREAM_KEY) == 0 and get_redis().xpending(STREAM_KEY, GROUP)["pending"] == 0
    assert statuses[202] and statuses[400], statuses  # the strategies reach both sides


# ---------------------------------------------------------------- the batch


def junk(news_ids):
    """Stream entries that are not valid events, whoever wrote them. Each one is invalid
    by construction (so the expected result does not depend on the code under test)."""
    good_n = st.sampled_from(news_ids).map(str)
    t = st.sampled_from(TYPES)
    bad_json = st.sampled_from(['{"x":NaN}', '{"x":Infinity}', '{"x":"\\ud800"}', '{"\\udc00":1}',
                                "[1]", '"s"', "{", '{"a":1}'.encode("utf-16").decode("latin-1")])
    deep_json = nested(31, 45).map(lambda d: json.dumps(d["m"]) if isinstance(d["m"], dict) else json.dumps({"k": d["m"]}))
    return st.one_of(
        st.dictionaries(st.binary(min_size=1, max_size=4).filter(lambda k: k not in (b"n", b"t", b"u", b"m")),
                        st.binary(max_size=8), min_size=1, max_size=3).flatmap(
            lambda extra: st.fixed_dictionaries({b"n": good_n, b"t": t}).map(lambda d: {**d, **extra})),
        st.fixed_dictionaries({b"n": good_n, b"t": t, b"m": bad_json | deep_json}),
        st.fixed_dictionaries({b"n": st.sampled_from(["0", "-1", "1.5", "abc", "", "05", str(2**63), " 1"]), b"t": t}),
        st.fixed_dictionaries({b"n": good_n, b"t": st.sampled_from(["click", "VIEW", "", "view "])}),
        st.fixed_dictionaries({b"n": good_n, b"t": t,
                               b"u": st.sampled_from(["x" * 65, " ann", "ann ", b"\xff\xfe"])}),
        st.fixed_dictionaries({b"t": t}),
    )


@pytest.mark.parametrize("database_check_only", [False, True])
def test_the_batch_counts_every_valid_event_once_and_quarantines_everything_else(monkeypatch, database_check_only):
    """database_check_only: the batch's own depth check is loosened (as an older version's
    would be), so deeply nested entries reach MariaDB, which refuses them (error 4025),
    and the chunk splitting has to find them."""
    if database_check_only:
        monkeypatch.setattr(validation, "MAX_STORED_METADATA_DEPTH", 100)
    news_ids = [NewsFactory().pk for _ in range(3)]
    counted: Counter = Counter()
    quarantined = 0

    good = valid_events(news_ids).map(lambda e: ("good", e))
    if database_check_only:
        # Depth 33 to 46 around plain leaves: only MariaDB's own JSON check refuses these.
        refused = nested(32, 45, leaf=st.integers(0, 9) | st.just("x")).map(
            lambda d: ("junk", {b"n": str(news_ids[0]), b"t": b"view", b"m": json.dumps({"k": d["m"]})}))
        entry = good | refused
    else:
        entry = good | junk(news_ids).map(lambda f: ("junk", f))

    @given(entries=st.lists(entry, max_size=25), chunk=st.integers(1, 30))
    def run(entries, chunk):
        nonlocal quarantined
        for kind, value in entries:
            if kind == "good":
                record_events([value])
                counted[(value["news_id"], value["event_type"])] += 1
            else:
                get_redis().xadd(STREAM_KEY, value)
                quarantined += 1
        summary = analytics_process_batch(reason="fuzz", chunk_size=chunk)
        good = sum(1 for kind, _ in entries if kind == "good")
        assert f"{good} counted" in summary and f"{len(entries) - good} quarantined" in summary, summary
        assert get_redis().xlen(STREAM_KEY) == 0

    run()
    assert news_totals() == {(n, t): counted[(n, t)] for n in news_ids for t in TYPES}
    assert QuarantinedEvent.objects.count() == quarantined
    if database_check_only and quarantined:
        assert set(QuarantinedEvent.objects.values_list("stage", flat=True)) == {"database"}

