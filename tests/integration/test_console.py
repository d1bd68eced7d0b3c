"""The console through its test client on the real test Redis: every route refuses without a session,
roles, CSRF, the login limit, requeue/purge with confirmation and audit, escaping, no receiver data."""
from __future__ import annotations

import json
import re

import pytest
import redis
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from ops.console.audit import AuditTrail
from ops.console.auth import LOGIN_MAX_FAILURES
from ops.processes import wait_until
from producer.backfill.jobs import JobStore
from shared.core.settings import get_settings
from shared.deadletters.store import DeadLetterStore
from shared.mapping.cache import mapping_cache
from shared.redis.keys import STOCKOUT_QUEUE
from tests.cli import cli
from tests.integration.console_kit import csrf_of, letter, login, make_app, write_users

pytestmark = pytest.mark.integration

GROUP = "transform: warehouse WH9 is not in [warehouses]"  # what console_kit's letters have to fix
HOSTILE = '<script>alert(1)</script>"onmouseover=alert(2) x="'


@pytest.fixture
def rt(redis_url):
    from shared.runtime import Runtime

    get_settings.cache_clear()
    return Runtime(get_settings())


@pytest.fixture
def app(rt, tmp_path):
    return make_app(rt, write_users(tmp_path / "users"))


@pytest.fixture
def store(rt):
    return DeadLetterStore(rt.redis, "t", keep_personal_data=True)


def client_of(app, user: str | None = None) -> TestClient:
    client = TestClient(app, base_url="http://127.0.0.1")
    if user:
        assert login(client, user).status_code == 303
    return client


def every_route(app) -> list[tuple[str, str]]:
    found = []
    for route in app.routes:
        if isinstance(route, Mount):
            continue
        assert isinstance(route, Route)
        path = re.sub(r"\{[^}]+\}", "x", route.path)
        found += [(method, path) for method in sorted(route.methods or ()) if method != "HEAD"]
    return found


def test_every_route_but_login_refuses_without_a_session(app):
    routes = every_route(app)
    assert len(routes) >= 30, "the walk sees every page, its /api twin and every change"
    client = client_of(app)
    for method, path in routes:
        if path == "/login":
            continue
        answer = client.request(method, path, follow_redirects=False)
        if path.startswith("/api/"):
            assert answer.status_code == 401, (method, path)
            assert answer.json() == {"error": "log in first: POST /login"}
        else:
            assert answer.status_code == 303 and answer.headers["location"] == "/login", (method, path)
    # an htmx refresh whose session ended sends the whole page to the login
    answer = client.get("/overview/panel", headers={"HX-Request": "true"}, follow_redirects=False)
    assert answer.status_code == 401 and answer.headers["HX-Redirect"] == "/login"
    # a forged cookie is no session
    client.cookies.set("sos_console", "eyJ1c2VyIjogIm90dG8ifQ==.forged.sig")
    assert client.get("/api/status").status_code == 401


def test_pages_and_their_json_answer_a_viewer(app, store, rt):
    import time

    from shared.redis.keys import Keys

    store.put(letter("9001"))
    keys = Keys("t")
    rt.redis.hset(keys.alerts_dlq_sent, "transform: MappingError", time.time() - 60)
    rt.redis.hset(keys.alerts_conditions, "cursor_lag", json.dumps({"since": 1.0, "sent": time.time(), "firing": True}))
    client = client_of(app, "vera")
    for path in ("/", "/deadletters", "/deadletters/9001", "/deadletters/CK9001", "/trace", "/backfill",
                 "/mapping", "/reconcile", "/audit"):
        answer = client.get(path)
        assert answer.status_code == 200, path
        assert "vera · viewer" in answer.text
        assert answer.headers["content-security-policy"].startswith("default-src 'self'")
        assert answer.headers["x-frame-options"] == "DENY"
    status = client.get("/api/status").json()
    assert status["dead_letters"] == 1
    assert status["dead_letters_by_reason"][0]["reason"] == "transform: warehouse WH9 is not in [warehouses]"
    assert [(a["what"], a["firing"]) for a in status["alerts_told"]] == [
        ("cursor_lag", True), ("dead letters: transform: MappingError", False)]
    assert "cursor_lag <span class=\"attention\">(firing)</span>" in client.get("/").text
    letters = client.get("/api/deadletters").json()
    assert letters["total"] == 1 and letters["letters"][0]["stockout_id"] == "9001"
    assert client.get("/api/deadletters/9001").json()["reason"].startswith("transform: MappingError")
    assert client.get("/api/deadletters/nope").status_code == 404
    assert client.get("/api/mapping").json()["in_force"]["fingerprint"] == mapping_cache(
        get_settings().mapping_file).get().fingerprint()
    for path in ("/api/backfill", "/api/reconcile"):
        assert client.get(path).json() == []
    assert client.get("/api/audit").json() == {"total": 0, "page": 0, "entries": []}
    assert client.get("/api/trace").status_code == 400


def test_the_list_follows_the_store_between_pages(app, store):
    client = client_of(app, "vera")
    assert client.get("/api/deadletters").json()["total"] == 0
    store.put(letter("9001"))
    store.put(letter("9002"))
    assert [x["stockout_id"] for x in client.get("/api/deadletters").json()["letters"]] == ["9002", "9001"]
    store.put(letter("9001", message="failed again, differently"))  # newest now, with its new reason
    shown = client.get("/api/deadletters").json()
    assert [x["stockout_id"] for x in shown["letters"]] == ["9001", "9002"]
    assert shown["letters"][0]["message"] == "failed again, differently" and shown["letters"][0]["warehouse"] == "WH9"
    store.purge(["9002"])
    assert [x["stockout_id"] for x in client.get("/api/deadletters").json()["letters"]] == ["9001"]
    assert client.get("/api/deadletters", params={"warehouse": "WH9", "page": "1"}).json()["letters"] == []


def test_a_letter_whose_id_holds_url_characters_is_reachable(app, store):
    store.put(letter("a/b?c#d", order_no="CK/1"))  # not what WDT's ids look like, but reachable all the same
    client = client_of(app, "vera")
    assert 'href="/deadletters/a/b%3Fc%23d"' in client.get("/deadletters").text
    assert client.get("/api/deadletters/a/b%3Fc%23d").json()["stockout_id"] == "a/b?c#d"
    assert client.get("/api/deadletters/CK/1").json()["stockout_id"] == "a/b?c#d"


def test_a_viewer_sees_no_change_button_and_is_refused_every_change(app, store, rt):
    store.put(letter("9001"))
    job = JobStore(rt.redis, "t").create(*_range(), slice_s=86400, synced=0)
    client = client_of(app, "vera")
    page = client.get("/deadletters").text
    assert "Requeue" not in page and "Purge" not in page
    token = csrf_of(page)
    for path, data in (("/deadletters/requeue", {"ids": "9001", "confirm": "yes"}),
                       ("/deadletters/purge", {"all": "yes", "confirm": "yes"}),
                       ("/backfill/start", {"since": "2026-11-01", "until": "2026-11-02"}),
                       (f"/backfill/{job.id}/cancel", {}), ("/reconcile/0/requeue", {"confirm": "yes"})):
        answer = client.post(path, data={**data, "csrf": token}, follow_redirects=False)
        assert answer.status_code == 403 and "vera is a viewer" in answer.text, path
    assert store.get("9001") is not None and JobStore(rt.redis, "t").get(job.id).state == "running"
    assert AuditTrail(rt.redis, "t").count() == 0


def test_a_change_without_the_sessions_csrf_token_is_refused(app, store):
    store.put(letter("9001"))
    client = client_of(app, "otto")
    for token in (None, "", "not-the-token"):
        data = {"ids": "9001", "confirm": "yes", **({"csrf": token} if token is not None else {})}
        answer = client.post("/deadletters/requeue", data=data, follow_redirects=False)
        assert answer.status_code == 403 and "CSRF" in answer.text
    # a token from another session is not this one's
    other = client_of(app, "otto")
    stolen = csrf_of(other.get("/deadletters").text)
    assert client.post("/deadletters/purge", data={"ids": "9001", "confirm": "yes", "csrf": stolen}).status_code == 403
    assert store.get("9001") is not None


def test_logins_are_rate_limited_per_user_and_per_address(app, rt):
    client = client_of(app)
    assert login(client, "otto", "wrong").status_code == 401
    assert login(client, "nobody", "wrong").status_code == 401, "an unknown name answers as a wrong password"
    for _ in range(LOGIN_MAX_FAILURES - 2):
        assert login(client, "otto", "wrong").status_code == 401
    refused = login(client, "otto")
    assert refused.status_code == 429 and "too many failed logins" in refused.text, "even the right password waits"
    assert client.get("/api/status").status_code == 401
    keys = [k.decode() for k in rt.redis.scan_iter("t:console:login:*")]
    assert keys and all("otto" not in k and "nobody" not in k for k in keys), "a typed name never becomes a key"


def test_session_cookie_is_signed_httponly_samesite_and_logout_ends_it(app):
    client = client_of(app)
    answer = login(client, "otto")
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert client.get("/api/status").status_code == 200
    token = csrf_of(client.get("/").text)
    assert client.post("/logout", data={"csrf": token}, follow_redirects=False).headers["location"] == "/login"
    assert client.get("/api/status").status_code == 401


def test_a_user_removed_from_the_file_loses_the_session(rt, tmp_path):
    users = write_users(tmp_path / "users")
    client = client_of(make_app(rt, users), "otto")
    users.write_text("\n".join(line for line in users.read_text().splitlines() if not line.startswith("otto")))
    restarted = client_of(make_app(rt, users))  # the file is read when the console starts
    restarted.cookies = client.cookies
    assert restarted.get("/api/status").status_code == 401


def test_requeue_a_group_confirms_how_many_and_which_mapping_then_audits(app, store, rt):
    for sid in ("9001", "9002", "9003"):
        store.put(letter(sid))
    store.put(letter("9100", stage="save", error_class="BipBusinessError", code="999", message="BIP said no"))
    client = client_of(app, "otto")
    token = csrf_of(client.get("/deadletters").text)
    asked = client.post("/deadletters/requeue", data={"group": GROUP, "csrf": token})
    assert asked.status_code == 200
    fingerprint = mapping_cache(get_settings().mapping_file).get().fingerprint()
    assert "Requeue 3 dead letter(s)?" in asked.text and fingerprint in asked.text
    assert store.count() == 4, "nothing happens before the confirmation"

    done = client.post("/deadletters/requeue", data={"group": GROUP, "csrf": token,
                                                     "confirm": "yes"}, follow_redirects=False)
    assert done.status_code == 303
    op_path = done.headers["location"]
    wait_until(lambda: client.get(f"/api{op_path}").json()["state"] == "done", timeout=30, message="requeue")
    assert client.get(f"/api{op_path}").json()["done"] == 3
    assert store.ids() == ["9100"]
    assert rt.redis.llen(f"t:{STOCKOUT_QUEUE}") == 3, "each went back to the stockouts queue"
    [entry] = AuditTrail(rt.redis, "t").recent()
    assert (entry.who, entry.role, entry.action, entry.count) == ("otto", "operator", "dlq.requeue", 3)
    assert GROUP in entry.detail and fingerprint in entry.detail
    assert sorted(entry.ids) == ["9001", "9002", "9003"]
    page = client.get("/audit").text
    assert "dlq.requeue" in page and "otto" in page


def test_requeue_a_selection_and_purge_by_filter(app, store, rt):
    for sid in ("9001", "9002", "9003"):
        store.put(letter(sid, warehouse_no="WH1" if sid != "9003" else "WH2"))
    client = client_of(app, "otto")
    token = csrf_of(client.get("/deadletters").text)
    filtered = client.get("/api/deadletters", params={"warehouse": "WH1"}).json()
    assert sorted(x["stockout_id"] for x in filtered["letters"]) == ["9001", "9002"]
    asked = client.post("/deadletters/requeue", data={"ids": ["9001", "9003"], "csrf": token})
    assert "Requeue 2 dead letter(s)?" in asked.text
    done = client.post("/deadletters/requeue", data={"ids": ["9001", "9003"], "csrf": token,
                                                     "confirm": "yes"})
    assert done.status_code == 200 and "requeue" in done.text  # the redirect followed: the operation's page
    wait_until(lambda: store.ids() == ["9002"], timeout=30, message="requeue of the selection")

    asked = client.post("/deadletters/purge", data={"warehouse": "WH1", "csrf": token})
    assert "Purge 1 dead letter(s)?" in asked.text and "deleted for good" in asked.text.lower()
    client.post("/deadletters/purge", data={"warehouse": "WH1", "csrf": token, "confirm": "yes"})
    wait_until(lambda: store.count() == 0, timeout=30, message="purge")
    wait_until(lambda: len(AuditTrail(rt.redis, "t").recent()) == 2, timeout=10, message="both audited")
    actions = [(e.action, e.count) for e in AuditTrail(rt.redis, "t").recent()]
    assert actions == [("dlq.purge", 1), ("dlq.requeue", 2)]


@pytest.mark.invariant(11)
def test_wdt_text_is_escaped_everywhere_and_no_receiver_data_is_shown(app, store, rt):
    store.put(letter("9001", order_no=f"CK{HOSTILE}", warehouse_no=f"WH{HOSTILE}", remark=f"remark {HOSTILE}",
                     message=f"warehouse WH{HOSTILE} is not in [warehouses]",
                     receiver_name="张三", receiver_mobile="13800000000", receiver_address="上海市浦东新区xx路1号"))
    client = client_of(app, "otto")
    pages = [client.get(p).text for p in ("/", "/deadletters", "/deadletters/9001", "/trace?q=9001",
                                          f"/deadletters?warehouse=WH{HOSTILE}")]
    token = csrf_of(pages[1])
    pages.append(client.post("/deadletters/requeue", data={"ids": "9001", "csrf": token}).text)
    for html in pages:
        assert "<script>alert" not in html and '"onmouseover=' not in html
        assert "13800000000" not in html and "张三" not in html and "浦东" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&#34;onmouseover=alert(2)" in pages[2], "shown, as text"
    assert "remark &lt;script&gt;" in pages[2]
    for path in ("/api/deadletters/9001", "/api/trace?q=9001", "/api/deadletters"):
        text = client.get(path).text
        assert "13800000000" not in text and "张三" not in text, path
    assert json.loads(client.get("/api/deadletters/9001").text)["stockout"]["remark"] == f"remark {HOSTILE}"


def test_backfill_start_with_the_clis_guard_rails_and_cancel(app, rt):
    client = client_of(app, "otto")
    token = csrf_of(client.get("/backfill").text)
    refused = client.post("/backfill/start", data={"since": "2026-11-02", "until": "2026-11-01", "csrf": token})
    assert refused.status_code == 400 and "must be after since" in refused.text
    refused = client.post("/backfill/start", data={"since": "yesterday", "until": "2026-11-01", "csrf": token})
    assert refused.status_code == 400 and "since='yesterday'" in refused.text.replace("&#39;", "'")
    assert JobStore(rt.redis, "t").all() == []
    started = client.post("/backfill/start", data={"since": "2026-11-01", "until": "2026-11-03", "csrf": token})
    assert started.status_code == 200
    [job] = JobStore(rt.redis, "t").all()
    assert (job.since, job.until, job.state) == ("2026-11-01 00:00:00", "2026-11-03 23:59:59", "running")
    assert client.get("/api/backfill").json()[0]["id"] == job.id
    client.post(f"/backfill/{job.id}/cancel", data={"csrf": token})
    assert JobStore(rt.redis, "t").get(job.id).state == "cancelled"
    assert client.post("/backfill/nope/cancel", data={"csrf": token}).status_code == 404
    actions = [(e.action, e.ids) for e in AuditTrail(rt.redis, "t").recent()]
    assert actions == [("backfill.cancel", [job.id]), ("backfill.start", [job.id])]

    # over BACKFILL_MAX_DAYS: asked first; an end after now: cut at now, and said
    asked = client.post("/backfill/start", data={"since": "2020-01-01", "until": "2026-11-01", "csrf": token})
    assert re.search(r"Backfill 24\d\d days", asked.text) and "BACKFILL_MAX_DAYS=365" in asked.text, asked.text[-900:]
    assert len(JobStore(rt.redis, "t").all()) == 1
    client.post("/backfill/start", data={"since": "2020-01-01", "until": "2026-11-01", "csrf": token, "confirm": "yes"})
    assert len(JobStore(rt.redis, "t").all()) == 2
    later = client.post("/backfill/start", data={"since": "2026-11-01", "until": "2099-01-01", "csrf": token})
    assert "is in the future: the job ends at now" in later.text and "recorded" in later.text
    assert JobStore(rt.redis, "t").all()[-1].until < "2099"


def test_reconcile_reports_are_listed_and_shown(app, rt):
    from producer.reconcile.reports import push_report

    push_report(rt.redis, "t", {"since": "2026-11-28 00:00:00", "until": "2026-11-29 00:00:00", "mismatches": 1,
                                "finished_at": "2026-11-29 03:00:05", "missing_total": 1,
                                "missing": [{"stockout_id": "9001", "order_no": f"CK{HOSTILE}", "state": "done",
                                             "proof": "detail 1002"}]})
    client = client_of(app, "otto")
    [row] = client.get("/api/reconcile").json()
    assert row["missing"] == 1 and row["mismatches"] == 1
    page = client.get("/reconcile/0").text
    assert "9001" in page and "detail 1002" in page and "<script>alert" not in page
    token = csrf_of(page)
    asked = client.post("/reconcile/0/requeue", data={"csrf": token})
    assert "checked again" in asked.text and "fingerprint" in asked.text
    assert client.get("/api/reconcile/5").status_code == 404


@pytest.mark.invariant(4)
def test_preview_and_trace_ask_the_sandbox_as_the_cli_does_and_no_page_shows_a_secret(sandbox, service, tmp_path):
    from datetime import timedelta

    from shared.core.timeutil import now_beijing
    from shared.runtime import Runtime
    from worker.transform import resubmit_key

    now = now_beijing()
    stockouts = sandbox.generate(10, bad=3, start=now - timedelta(hours=1), end=now - timedelta(minutes=1))
    good = next(s for s in stockouts if s["stockout_id"] not in sandbox.bad_ids and s["status"] in ("95", "110"))
    bad_id = next(i for i, why in sandbox.bad_reasons.items() if why == "unknown_warehouse")
    bad = next(s for s in stockouts if s["stockout_id"] == bad_id)
    client = client_of(make_app(Runtime(get_settings()), write_users(tmp_path / "users")), "vera")

    shown = client.get("/api/mapping", params={"no": good["order_no"]}).json()["preview"]
    assert shown["found"] and shown["payload"]["data"]["resubmitCheckKey"] == resubmit_key(good["stockout_id"])
    assert "resubmitCheckKey" in client.get("/mapping", params={"no": good["order_no"]}).text
    refused = client.get("/api/mapping", params={"no": bad["order_no"]}).json()["preview"]
    assert refused["found"] and "WH-XX99" in refused["error"]
    assert "WH-XX99" in client.get("/mapping", params={"no": bad["order_no"]}).text
    assert client.get("/api/mapping", params={"no": "CK-NO-SUCH"}).json()["preview"]["found"] is False
    assert not sandbox.records(), "preview never saves"

    secrets = get_settings().secret_values()
    assert secrets, "the sandbox's credentials are set"
    for path in ("/", "/api/status", "/deadletters", "/api/deadletters", "/mapping", "/api/mapping", "/backfill",
                 "/reconcile", "/audit", f"/trace?q={good['order_no']}", f"/api/trace?q={good['order_no']}",
                 f"/api/mapping?no={good['order_no']}"):
        shown = client.get(path).text
        assert not [x for x in secrets if x in shown], f"a secret on {path}"

    traced = client.get("/api/trace", params={"q": good["order_no"]}).json()
    assert traced["verdict"] == "never seen" and traced["stockout_id"] == good["stockout_id"], "no poll yet"
    assert traced["wdt"]["found"] and traced["wdt"]["passes_filters"] is True
    assert "WDT has it, but nothing here knows it" in client.get("/trace", params={"q": good["order_no"]}).text


def test_requeue_the_proven_missing_checks_the_range_again_and_publishes_only_those(sandbox, service, tmp_path):
    from datetime import timedelta

    from producer.reconcile.reports import push_report
    from shared.core.timeutil import format_wire, now_beijing
    from shared.runtime import Runtime

    now = now_beijing()
    since, until = now - timedelta(hours=2), now - timedelta(minutes=1)
    stockouts = sandbox.generate(6, start=since + timedelta(minutes=5), end=until - timedelta(minutes=5))
    eligible = {s["stockout_id"] for s in stockouts if s["status"] in ("95", "110")}
    rt = Runtime(get_settings())
    push_report(rt.redis, "t", {"since": format_wire(since), "until": format_wire(until), "mismatches": 1,
                                "missing_total": 1, "missing": [{"stockout_id": "gone-since", "state": "done"}]})
    client = client_of(make_app(rt, write_users(tmp_path / "users")), "otto")
    token = csrf_of(client.get("/reconcile/0").text)
    asked = client.post("/reconcile/0/requeue", data={"csrf": token})
    assert "The report listed 1." in asked.text and "checked again" in asked.text
    done = client.post("/reconcile/0/requeue", data={"csrf": token, "confirm": "yes"}, follow_redirects=False)
    op_path = done.headers["location"]
    op = wait_until(lambda: (o := client.get(f"/api{op_path}").json())["state"] != "running" and o, timeout=60,
                    message="reconcile and requeue")
    assert op["state"] == "done", op
    assert op["done"] == len(eligible), "what this run proved missing (nothing is in BIP), not the stale report's row"
    assert rt.redis.llen(f"t:{STOCKOUT_QUEUE}") == len(eligible)
    [entry] = AuditTrail(rt.redis, "t").recent()
    assert entry.action == "reconcile.requeue" and entry.count == len(eligible) and set(entry.ids) == eligible


def test_the_console_refuses_to_start_without_a_key_or_with_a_bad_users_file(redis_url, tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSOLE_")}
    refused = cli(env, "console")
    assert refused.returncode == 2 and "CONSOLE_SECRET_KEY is empty" in refused.stderr + refused.stdout
    (tmp_path / "users").write_text("ana:operator:hunter2hunter2\n")
    env.update(CONSOLE_SECRET_KEY="s" * 40, CONSOLE_USERS_FILE=str(tmp_path / "users"))
    refused = cli(env, "console")
    said = refused.stderr + refused.stdout
    assert refused.returncode == 2 and "line 1" in said and "hash-password" in said and "hunter2" not in said
    hashed = cli(env, "console", "hash-password", input="a-long-password\n")
    assert hashed.returncode == 0 and hashed.stdout.startswith("scrypt$")


def test_changes_made_with_the_cli_are_in_the_same_trail(rt, store, redis_url):
    import getpass
    import os

    store.put(letter("9001"))
    store.put(letter("9002"))
    env = {**os.environ}
    assert cli(env, "dlq", "requeue", "9001").returncode == 0
    assert cli(env, "dlq", "purge", "--all", "--yes").returncode == 0
    started = cli(env, "backfill", "--since", "2026-11-01", "--until", "2026-11-02", "--json")
    job_id = json.loads(started.stdout)["id"]
    assert cli(env, "backfill", "cancel", job_id).returncode == 0
    assert cli(env, "dlq", "requeue", "--all").returncode == 0, "nothing left: nothing written"
    entries = AuditTrail(rt.redis, "t").recent()
    assert [(e.action, e.count, e.ids, e.role) for e in entries] == [
        ("backfill.cancel", 1, [job_id], "cli"), ("backfill.start", 1, [job_id], "cli"),
        ("dlq.purge", 1, ["9002"], "cli"), ("dlq.requeue", 1, ["9001"], "cli")]
    assert {e.who for e in entries} == {getpass.getuser()}
    assert entries[2].detail == "every dead letter, deleted for good"


def test_audit_command_prints_the_trail(rt, redis_url):
    AuditTrail(rt.redis, "t").record("otto", "operator", "dlq.requeue", count=3, detail="the group x", ids=["1"])
    import os

    env = {**os.environ}
    shown = cli(env, "audit", "--json")
    assert shown.returncode == 0, shown.stderr
    [entry] = [json.loads(line) for line in shown.stdout.splitlines()]
    assert (entry["who"], entry["action"], entry["count"]) == ("otto", "dlq.requeue", 3)
    table = cli(env, "audit")
    assert "otto (operator)" in table.stdout and "dlq.requeue" in table.stdout


def _range():
    from shared.core.timeutil import parse_wire

    return parse_wire("2026-11-01"), parse_wire("2026-11-02")


@pytest.mark.slow
def test_the_demo_opens_the_console_on_its_own_state_until_ctrl_c(redis_url, tmp_path):
    import os
    import signal
    import subprocess

    import requests

    from shared.redis.conn import free_port
    from tests.cli import command

    port = free_port()
    log = tmp_path / "demo.log"
    with log.open("w") as out:
        demo = subprocess.Popen(command("demo", "--stockouts", "40", "--bad", "3", "--console", str(port)),
                                env={**os.environ, "REDIS_URL": redis_url}, stdout=out, stderr=subprocess.STDOUT,
                                text=True)
    try:
        line = wait_until(lambda: re.search(r"as user demo, password (\S+)", log.read_text()) or demo.poll(),
                          timeout=240, message="the demo's console")
        assert isinstance(line, re.Match), log.read_text()
        http = requests.Session()
        url = f"http://127.0.0.1:{port}"
        token = csrf_of(http.get(f"{url}/login", timeout=10).text)
        http.post(f"{url}/login", data={"user": "demo", "password": line.group(1), "csrf": token}, timeout=10)
        assert http.get(f"{url}/api/deadletters", timeout=10).json()["total"] == 3, "the demo's three bad ones"
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=60) == 0, log.read_text()
    finally:
        if demo.poll() is None:  # Ctrl-C: the demo stops its worker, beat and console itself
            demo.send_signal(signal.SIGINT)
            try:
                demo.wait(timeout=60)
            except subprocess.TimeoutExpired:
                demo.kill()
        client = redis.Redis.from_url(redis_url)  # a demo cut short leaves its prefix: not ours to keep
        for key in client.scan_iter(match="demo*"):
            client.delete(key)
        client.close()
