"""Local queries through the generated Python bindings: the JSON filter form, keyset
pages, counts, search, observers and typed errors for bad input.

A second language over the same FFI calls the Kotlin and Swift layers make, so the
query path is exercised from outside Rust.
"""

import json
import queue

import pytest

from conftest import USERS, ffi

AMINA = USERS[0][2]
NAMES = ["Amina", "Ben", "Chioma", "Amir", "Dara", "Émile", "Femi", "Amadou", "Gift", "Hana"]


@pytest.fixture
def db(devices):
    """A device holding p00..p09: even ones in v042, ages 0..9, every third one due."""
    d = devices("q", AMINA)
    for i, name in enumerate(NAMES):
        d.put("patients", f"p{i:02}", json.dumps({
            "name": name, "village": "v042" if i % 2 == 0 else "v043", "age": i,
            "status": "due" if i % 3 == 0 else None, "child": i < 5}))
    return d


def ids(records):
    return [r.id for r in records]


def where(filter_json, **kwargs):
    return ffi.Query(filter_json=json.dumps(filter_json), **kwargs)


def test_filter_json_with_several_operators_and_orders(db):
    q = where({"and": [{"eq": ["village", "v042"]}, {"gte": ["age", 2]},
                       {"in": ["status", ["due", None]]}]},
              order=[ffi.OrderBy(field="age", descending=True)], limit=3)
    assert ids(db.query("patients", q)) == ["p08", "p06", "p04"]
    q = where({"or": [{"prefix_ci": ["name", "AM"]}, {"is_null": "status"}, {"exists": "none"}]},
              filters=[ffi.Filter(field="child", value_json="true")],
              order_by="village", descending=True, order=[ffi.OrderBy(field="name")])
    assert ids(db.query("patients", q)) == ["p03", "p01", "p00", "p02", "p04"]
    q = where({"and": [{"ne": ["status", "due"]}, {"lt": ["name", "C"]}, {"prefix": ["name", "A"]}]})
    assert ids(db.query("patients", q)) == ["p07"]


def test_query_page_walks_every_record_once(db):
    q = ffi.Query(order=[ffi.OrderBy(field="village")], limit=4)
    seen, pages = [], 0
    while True:
        page = db.query_page("patients", q)
        pages += 1
        seen += ids(page.records)
        if pages == 1:
            # Sorts before the cursor: it would shift an offset, never a keyset.
            db.put("patients", "a-new", json.dumps({"village": "v000"}))
        if page.next is None:
            break
        q.after = page.next
    assert pages == 3
    assert seen == [f"p{i:02}" for i in sorted(range(10), key=lambda i: i % 2)]


def test_count_where_and_search(db):
    assert db.count_where("patients", json.dumps({"in": ["village", ["v042", "v043"]]})) == 10
    assert db.count_where("patients", json.dumps({"and": [{"lt": ["age", 5]}, {"eq": ["status", "due"]}]})) == 2
    assert ids(db.query("patients", where({"search": "ami*"}))) == ["p00", "p03"]
    assert ids(db.query("patients", where({"search": "emile"}))) == ["p05"]
    assert db.count_where("patients", json.dumps({"search": "amadou"})) == 1


class Results(ffi.QueryListener):
    def __init__(self):
        self.results = queue.Queue()

    def on_result(self, records):
        self.results.put(ids(records))


class OneRecord(ffi.RecordListener):
    def __init__(self):
        self.states = queue.Queue()

    def on_record(self, record):
        self.states.put(None if record is None else json.loads(record.data_json))


def nothing_more(q):
    with pytest.raises(queue.Empty):
        q.get(timeout=0.3)


def test_observe_delivers_the_initial_result_then_a_changed_one(db):
    listener = Results()
    handle = db.observe("patients", where({"eq": ["status", "due"]}), listener)
    assert listener.results.get(timeout=5) == ["p00", "p03", "p06", "p09"]
    db.patch("patients", "p01", json.dumps({"status": "due"}))
    assert listener.results.get(timeout=5) == ["p00", "p01", "p03", "p06", "p09"]
    db.patch("patients", "p02", json.dumps({"age": 20}))  # not in the result, not selected
    nothing_more(listener.results)
    handle.close()
    assert handle.is_closed()
    db.delete("patients", "p00")
    nothing_more(listener.results)


def test_observe_one_follows_a_record(db):
    listener = OneRecord()
    handle = db.observe_one("patients", "p-new", listener)
    assert listener.states.get(timeout=5) is None
    db.put("patients", "p-new", json.dumps({"name": "Zainab"}))
    assert listener.states.get(timeout=5) == {"name": "Zainab"}
    db.delete("patients", "p-new")
    assert listener.states.get(timeout=5) is None
    handle.close()


def test_a_throwing_query_listener_hears_the_next_change(db):
    class Throws(Results):
        calls = 0

        def on_result(self, records):
            super().on_result(records)
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("a listener bug")
    listener = Throws()
    handle = db.observe("answers", ffi.Query(), listener)  # noqa: F841 (kept alive)
    assert listener.results.get(timeout=5) == []
    db.put("answers", "a1", "{}")
    assert listener.results.get(timeout=5) == ["a1"]


BAD_FILTERS = [
    {"like": ["name", "Am%"]},   # an unknown operator
    {"eq": ['na"me', "Amina"]},  # a field name no JSON path can name
    {"eq": ["", "Amina"]},       # an empty field name
    {"gt": ["child", True]},     # a range on a boolean
    {"eq": ["name"]},            # a missing operand
]


@pytest.mark.parametrize("bad", BAD_FILTERS, ids=[next(iter(f)) + str(i) for i, f in enumerate(BAD_FILTERS)])
def test_a_bad_filter_is_invalid_data_and_changes_nothing(db, bad):
    with pytest.raises(ffi.OutpostError.InvalidData):
        db.query("patients", where(bad))
    with pytest.raises(ffi.OutpostError.InvalidData):
        db.query_page("patients", where(bad))
    with pytest.raises(ffi.OutpostError.InvalidData):
        db.count_where("patients", json.dumps(bad))
    listener = Results()
    with pytest.raises(ffi.OutpostError.InvalidData):
        db.observe("patients", where(bad), listener)
    nothing_more(listener.results)
    assert db.count("patients", []) == 10
    assert db.status().pending == 10


def test_bad_cursors_and_other_bad_input_are_typed_errors(db):
    cursor = db.query_page("patients", ffi.Query(limit=2)).next
    for after in ["not a cursor", cursor[:-2] + "00", cursor[1:]]:
        with pytest.raises(ffi.OutpostError.InvalidData):
            db.query_page("patients", ffi.Query(after=after))
    with pytest.raises(ffi.OutpostError.InvalidData, match="another order"):
        db.query_page("patients", ffi.Query(order_by="age", after=cursor))
    with pytest.raises(ffi.OutpostError.InvalidData):
        db.count_where("patients", "{not json")
    with pytest.raises(ffi.OutpostError.InvalidData):
        db.count_where("answers", json.dumps({"search": "amina"}))  # no search fields
    with pytest.raises(ffi.OutpostError.InvalidData):
        db.query("patients", ffi.Query(order=[ffi.OrderBy(field="bad\u0001field")]))
    with pytest.raises(ffi.OutpostError.UnknownCollection):
        db.observe_one("nope", "x", OneRecord())
    with pytest.raises(ffi.OutpostError.InvalidRecordId):
        db.observe_one("patients", "", OneRecord())
    assert db.count("patients", []) == 10
