"""The mirror's three-way merge: the web app's edits arrive, the daemon's own writes never
bounce back as edits."""

from __future__ import annotations

from tradebotd.sync.mirror import MIRRORED, merge

BASE = {name: None for name in MIRRORED} | {"status": "running", "typescript_code": "v1", "parameters": {"a": 1}}


def test_a_new_row_is_taken_whole() -> None:
    assert merge(None, None, BASE) == {k: v for k, v in BASE.items() if k in MIRRORED}


def test_remote_edits_arrive_and_unchanged_fields_keep_local_values() -> None:
    local = {**BASE, "status": "error", "error_message": "3 consecutive errors"}  # not shipped yet
    remote = {**BASE, "typescript_code": "v2"}  # the user edits the code meanwhile
    assert merge(local, BASE, remote) == {"typescript_code": "v2"}  # the local error stays


def test_the_daemons_own_write_coming_back_is_not_an_edit() -> None:
    local = {**BASE, "status": "error", "error_message": "boom"}
    remote = {**local}  # the outbox shipped it; the poll reads it back
    assert merge(local, BASE, remote) == {}


def test_restarted_in_the_app_clears_the_old_error() -> None:
    errored = {**BASE, "status": "error", "error_message": "boom"}
    remote = {**errored, "status": "running"}
    assert merge(errored, errored, remote) == {"status": "running", "error_message": None}
