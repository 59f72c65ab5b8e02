"""The history ring, the apply state and what nginx has loaded (nginxctl.history): pure, a dict as the store."""

from __future__ import annotations

import pytest
from nginxctl.history import (
    HISTORY_SLOTS,
    Entry,
    History,
    Master,
    Phase,
    State,
    current_entry,
    loaded_now,
    select_rollback,
    sha,
)


class DictStore:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.writes = 0

    def read_file(self, path: str) -> bytes | None:
        return self.files.get(path)

    def put_files(self, directory: str, files: dict[str, str]) -> None:
        self.writes += 1
        for name, text in files.items():
            self.files[f"{directory}/{name}"] = text.encode()


def test_history_ring_keeps_the_newest_slots_and_reads_each():
    store = DictStore()
    history = History(store, "/etc/nginx/nginx.conf")
    for i in range(HISTORY_SLOTS + 7):
        entries = history.entries()
        history.write(history.record(f"config {i}\n", entries, now=1000.0 + i))
    entries = history.entries()
    assert len(entries) == HISTORY_SLOTS
    assert [e.id for e in entries[:2]] == [HISTORY_SLOTS + 7, HISTORY_SLOTS + 6]
    assert history.read(entries[0]) == f"config {HISTORY_SLOTS + 6}\n"
    assert history.read(entries[-1]) == "config 7\n"
    assert history.read(Entry(1, 0.0, sha("config 0\n"))) is None  # its slot was reused


def test_recording_the_newest_config_again_writes_nothing():
    history = History(DictStore(), "/etc/nginx/nginx.conf")
    entries: list[Entry] = []
    assert history.record("a", entries)
    assert history.record("a", entries) == {}


def test_state_round_trip_and_garbage():
    state = State(Phase.INSTALLED, "h", "p", "l", Master(7, "2026-01-01T00:00:00Z"))
    assert State.parse(state.dumps().encode()) == state
    assert State.parse(b"{not json") == State()
    assert State.parse(b'{"phase": "bogus"}') == State()
    assert State.parse(None).phase is Phase.DONE


M1, M2 = Master(100, "2026-12-02T10:00:00Z"), Master(200, "2026-12-02T11:00:00Z")


@pytest.mark.parametrize(("state", "master", "file_hash", "older", "expected"), [
    (State(loaded="a", master=M1), M1, "b", True, "a"),       # same master: what was verified
    (State(loaded=None, master=M1), M1, "b", True, None),     # same master, never verified: unknown
    (State(loaded="a", master=M1), M2, "b", True, "b"),       # restarted: it read the file, older than it
    (State(loaded="a", master=M1), M2, "b", False, None),     # restarted, file written after: unknown
    (State(), M1, "b", True, "b"),                            # never managed: the file it started with
    (State(loaded="a", master=M1), None, "b", True, None),    # no master: nothing runs
])
def test_loaded_now(state, master, file_hash, older, expected):
    assert loaded_now(state, master, file_hash, older) == expected


ENTRIES = [Entry(5, 5.0, "e"), Entry(4, 4.0, "d"), Entry(3, 3.0, "d"), Entry(2, 2.0, "c"), Entry(1, 1.0, "b")]


def test_rollback_goes_to_the_newest_older_different_config():
    assert select_rollback(ENTRIES, "e", None).id == 4
    assert select_rollback(ENTRIES, "d", None).id == 2  # skips the other entry with the same config
    assert select_rollback(ENTRIES, "zzz", None).id == 5  # current not in the history: the newest
    assert select_rollback(ENTRIES, "e", 1).hash == "b"


def test_rollback_without_an_earlier_config_or_to_an_unknown_id():
    with pytest.raises(LookupError, match="no earlier config"):
        select_rollback([Entry(1, 1.0, "a")], "a", None)
    with pytest.raises(LookupError, match=r"no history entry 9 \(entries: 5, 4, 3, 2, 1\)"):
        select_rollback(ENTRIES, "e", 9)


def test_one_entry_is_current():
    assert current_entry(ENTRIES, "d") == 4
    assert current_entry(ENTRIES, None) is None and current_entry(ENTRIES, "x") is None


def test_a_target_written_by_an_older_nginxctl_is_read_and_the_next_write_carries_the_format():
    import json

    from nginxctl.history import FORMAT

    store = DictStore()
    # format 1: the index a bare list, the state without a format (what nginxctl wrote before)
    store.files["/etc/nginx/.nginxctl/history/index.json"] = json.dumps(
        [{"id": 3, "time": 1.0, "hash": sha("three\n")}, {"id": 2, "time": 0.5, "hash": sha("two\n")}]).encode()
    store.files["/etc/nginx/.nginxctl/history/slot-03.conf"] = b"three\n"
    store.files["/etc/nginx/.nginxctl/state.json"] = json.dumps(
        {"phase": "done", "loaded": sha("three\n"), "master": {"pid": 7, "started": "t"}}).encode()
    store.files["/etc/nginx/.nginxctl/health.json"] = b"[not, an, object]"
    history = History(store, "/etc/nginx/nginx.conf")
    entries = history.entries()
    assert [e.id for e in entries] == [3, 2] and history.read(entries[0]) == "three\n"
    assert history.state().loaded == sha("three\n") and history.last_phase() == "done"
    history.write({**history.record("four\n", entries, now=2.0), **history.state_file(State(Phase.DONE, "h"))})
    index = json.loads(store.files["/etc/nginx/.nginxctl/history/index.json"])
    assert index["format"] == FORMAT and [e["id"] for e in index["entries"]] == [4, 3, 2]
    assert json.loads(store.files["/etc/nginx/.nginxctl/state.json"])["format"] == FORMAT
    assert [e.id for e in history.entries()] == [4, 3, 2]
    from nginxctl.published import Published

    assert Published(store, "/etc/nginx").health() is None  # unreadable: no health, not a traceback


# -- keepalived.conf (ha:) recorded with the nginx config: one entry, one rollback ------------------------------


def test_a_keepalived_conf_is_recorded_with_its_config_as_one_entry():
    store = DictStore()
    history = History(store, "/etc/nginx/nginx.conf")
    entries = history.entries()
    history.write(history.record("nginx 1\n", entries, now=1.0, keepalived="advert_int 1\n"))
    assert history.record("nginx 1\n", entries, keepalived="advert_int 1\n") == {}   # the newest already
    history.write(history.record("nginx 1\n", entries, now=2.0, keepalived="advert_int 2\n"))   # keepalived alone
    assert history.record("nginx 1\n", entries) == {}   # nginx alone (the watch): the newest entry is that config
    entries = history.entries()
    assert [(e.id, e.keepalived) for e in entries] == [(2, sha("advert_int 2\n")), (1, sha("advert_int 1\n"))]
    assert [history.read(e) for e in entries] == ["nginx 1\n", "nginx 1\n"]
    assert [history.read_keepalived(e) for e in entries] == ["advert_int 2\n", "advert_int 1\n"]
    assert set(store.files) >= {"/etc/nginx/.nginxctl/history/slot-01.keepalived.conf",
                                "/etc/nginx/.nginxctl/history/slot-02.keepalived.conf"}
    # rollback from (nginx 1, advert 2) goes to the entry whose keepalived.conf differs; the current one is marked
    assert select_rollback(entries, sha("nginx 1\n"), None, sha("advert_int 2\n")).id == 1
    assert current_entry(entries, sha("nginx 1\n"), sha("advert_int 1\n")) == 1
    assert current_entry(entries, sha("nginx 1\n")) == 2   # keepalived unknown: the newest with that nginx config


def test_an_entry_without_keepalived_reads_fine_and_speaks_of_nginx_alone():
    import json

    store = DictStore()
    # format 2 as an nginxctl without keepalived in its history wrote it: no "keepalived" key
    store.files["/etc/nginx/.nginxctl/history/index.json"] = json.dumps({"format": 2, "entries": [
        {"id": 2, "time": 2.0, "hash": sha("two\n")}, {"id": 1, "time": 1.0, "hash": sha("one\n")}]}).encode()
    history = History(store, "/etc/nginx/nginx.conf")
    entries = history.entries()
    assert [(e.id, e.keepalived) for e in entries] == [(2, None), (1, None)]
    assert history.read_keepalived(entries[0]) is None
    assert select_rollback(entries, sha("two\n"), None, sha("any keepalived.conf")).id == 1
    assert current_entry(entries, sha("two\n"), sha("any keepalived.conf")) == 2
    # the next apply with ha: adds an entry for the same nginx config with its keepalived.conf
    history.write(history.record("two\n", entries, now=3.0, keepalived="k\n"))
    index = json.loads(store.files["/etc/nginx/.nginxctl/history/index.json"])
    assert index["format"] == 2 and [e.get("keepalived") for e in index["entries"]] == [sha("k\n"), None, None]
    assert [e.id for e in History(store, "/etc/nginx/nginx.conf").entries()] == [3, 2, 1]
