"""The console's pages and their JSON twins under /api/: each reads through the functions the CLI uses
(ops.status, the dead-letter store, ops.trace, backfill jobs, reconcile reports, the mapping cache)."""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from ops.backfill import beat_walks, plan, start_backfill
from ops.console.auth import LoginLimiter, authenticate, csrf_ok, new_csrf_token
from ops.console.bulk import in_batches
from ops.console.letters import LetterIndex
from ops.console.web import HERE, change, console_of, problem, render
from ops.preview import preview
from ops.status import backfill_views, dead_letter_groups
from ops.trace import trace
from producer.backfill.jobs import JobStore
from producer.reconcile.reports import REPORTS_KEPT, recent_reports
from shared.core.errors import StockoutSyncError
from shared.core.personal import redact
from shared.core.timeutil import format_wire, parse_given
from shared.deadletters.model import DeadLetter
from shared.deadletters.store import DeadLetterStore
from shared.observe.snapshot import Snapshot

PER_PAGE = 50
FILTERS = ("group", "reason", "code", "warehouse", "day")
MAX_QUERY = 200  # longest filter or search text taken from a request


def text(value: object) -> str:
    return value.strip()[:MAX_QUERY] if isinstance(value, str) else ""


def wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def page_number(request: Request) -> int:
    try:
        return max(0, int(request.query_params.get("page", "0")))
    except ValueError:
        return 0


# -- login ---------------------------------------------------------------------------------------
async def login_page(request: Request) -> Response:
    return render(request, "login.html", error="")


async def login(request: Request) -> Response:
    console = console_of(request)
    form = await request.form()
    name, password = text(form.get("user")), form.get("password")
    if not csrf_ok(request.session.get("csrf"), form.get("csrf")):
        return render(request, "login.html", 403, error="the login form was out of date: try again")
    limiter = LoginLimiter(console.rt.redis, console.prefix)
    client = request.client.host if request.client else ""
    wait = await run_in_threadpool(limiter.blocked_for_s, name, client)
    if wait:
        return render(request, "login.html", 429, error=f"too many failed logins: try again in {wait} s")
    user = await run_in_threadpool(authenticate, console.users, name, password if isinstance(password, str) else "")
    if user is None:
        await run_in_threadpool(limiter.failed, name, client)
        return render(request, "login.html", 401, error="wrong user name or password")
    await run_in_threadpool(limiter.succeeded, name)
    request.session.clear()  # a new session (and CSRF token) for the logged-in user: nothing carried over
    request.session.update({"user": user.name, "csrf": new_csrf_token()})
    return RedirectResponse("/", status_code=303)


async def logout_route(request: Request) -> Response:
    # a viewer may log out too: only the CSRF token is checked here, not the role
    form = await request.form()
    if not csrf_ok(request.session.get("csrf"), form.get("csrf")):
        return problem(request, 403, "this form is out of date: reload the page")
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


# -- overview ------------------------------------------------------------------------------------
async def overview(request: Request) -> Response:
    console = console_of(request)
    status = await run_in_threadpool(console.status.get)
    if wants_json(request):
        return JSONResponse(status.model_dump(mode="json"))
    template = "overview_panel.html" if request.url.path == "/overview/panel" else "overview.html"
    return render(request, template, status=status, age_s=console.status.age_s)


# -- dead letters --------------------------------------------------------------------------------
def letter_row(letter: DeadLetter) -> dict[str, Any]:
    return {
        "stockout_id": letter.stockout_id, "order_no": letter.order_no, "group": letter.group,
        "message": letter.message[:300], "code": letter.code, "attempts": letter.attempts,
        "warehouse": str(letter.stockout.get("warehouse_no", ""))[:64], "last_failed_at": letter.last_failed_at,
        "malformed": letter.malformed,
    }


def letters_page(index: LetterIndex, filters: dict[str, str], page: int) -> dict[str, Any]:
    """A page of letters, newest failure first, and the groups of all of them."""
    letters = index.current()
    groups = dead_letter_groups(letters)
    matching = [x for x in letters if x.matches(**filters)] if any(filters.values()) else letters
    matching.reverse()
    return {"total": len(matching), "page": page, "per_page": PER_PAGE, "filters": filters,
            "letters": [letter_row(x) for x in matching[page * PER_PAGE:(page + 1) * PER_PAGE]],
            "groups": [g.model_dump() for g in groups]}


async def dead_letters(request: Request) -> Response:
    console = console_of(request)
    filters = {name: text(request.query_params.get(name)) for name in FILTERS}
    data = await run_in_threadpool(letters_page, console.letters, filters, page_number(request))
    if wants_json(request):
        return JSONResponse(data)
    query = urlencode({k: v for k, v in filters.items() if v})
    return render(request, "deadletters.html", data=data, query=query,
                  pages=(data["total"] + PER_PAGE - 1) // PER_PAGE)


def letter_view(letter: DeadLetter) -> dict[str, Any]:
    """The letter whole, but never the receiver's data (even if DLQ_KEEP_PERSONAL_DATA kept it)."""
    data = letter.model_dump(mode="json")
    data["stockout"] = redact(letter.stockout)
    data["reason"] = letter.reason
    return data


async def dead_letter(request: Request) -> Response:
    console = console_of(request)
    store = DeadLetterStore(console.rt.redis, console.prefix)
    name = text(request.path_params["name"])
    letter = await run_in_threadpool(lambda: store.get(name) or store.get(store.find_order(name) or ""))
    if letter is None:
        return problem(request, 404, f"no dead letter for stockout or order {name}")
    data = letter_view(letter)
    if wants_json(request):
        return JSONResponse(data)
    return render(request, "letter.html", letter=letter, data=data,
                  stockout_json=json.dumps(data["stockout"], ensure_ascii=False, indent=2))


def selection(form: FormData) -> tuple[list[str], dict[str, str], str]:
    """The letters a form names: ticked ids, or a filter (a group, a reason…), or all; and in words."""
    ids = [text(i) for i in form.getlist("ids") if text(i)]
    match = {name: text(form.get(name)) for name in FILTERS}
    if ids:
        return ids, {}, f"{len(ids)} chosen letter(s)"
    said = ", ".join(f"{k} = {v!r}" for k, v in match.items() if v)
    return [], match, (f"the letters whose {said}" if said else "every dead letter")


def mapping_in_force(request: Request) -> dict[str, Any]:
    """The mapping a requeue goes through: the file, its fingerprint, since when; or why there is none."""
    rt = console_of(request).rt
    try:
        mapping = rt.mappings.get()
    except Exception as err:
        return {"ok": False, "file": str(rt.mappings.path), "error": str(err)}
    problem_now = rt.mappings.problem
    return {"ok": True, "file": str(rt.mappings.path), "fingerprint": mapping.fingerprint(),
            "since": rt.mappings.in_force_since, "loaded_at": rt.mappings.loaded_at,
            "problem": problem_now.line() if problem_now else ""}


def mapping_words(m: dict[str, Any]) -> str:
    return f"mapping {m['file']} (fingerprint {m['fingerprint']}, in force since {m['since']} Beijing)"


async def dlq_change(request: Request, form: FormData, action: str) -> Response:
    console = console_of(request)
    store = DeadLetterStore(console.rt.redis, console.prefix)
    ids, match, words = selection(form)
    if not ids and not any(match.values()) and form.get("all") != "yes":
        return problem(request, 400, "choose letters: tick some, or use a group's or the filter's button")

    def choose() -> tuple[list[str], list[str], int]:
        chosen = store.select(ids, **match)
        found, malformed = store.sort_out(chosen)
        return found, malformed, len(chosen)

    found, malformed, _ = await run_in_threadpool(choose)
    mapping = mapping_in_force(request)
    targets = found if action == "requeue" else found + malformed
    if action == "requeue" and not mapping["ok"]:
        return problem(request, 409, f"nothing requeued: the mapping file does not validate ({mapping['error']})")
    if form.get("confirm") != "yes":
        same = 0
        if action == "requeue":
            same = sum(1 for x in store.iter_all(found[:5000]) if x.mapping_fingerprint == mapping["fingerprint"])
        hidden = [("ids", i) for i in ids] + [(k, v) for k, v in match.items() if v]
        if form.get("all") == "yes":
            hidden.append(("all", "yes"))
        return render(request, "confirm.html", action=action, count=len(targets), words=words, mapping=mapping,
                      malformed=malformed if action == "requeue" else [], same_mapping=same,
                      examples=targets[:20], hidden=hidden, post_to=f"/deadletters/{action}")
    user = request.state.user
    if action == "requeue":
        from shared.queue.events import announce_requeued  # Flower marks the failures resolved, as for the CLI
        from shared.queue.publisher import publish_stockout

        op = console.operations.start(
            "dlq.requeue", user.name, user.role, f"{words} through {mapping_words(mapping)}", len(targets),
            in_batches(targets, lambda chunk: store.requeue(
                chunk, publish_stockout, on_sent=lambda sent: announce_requeued(x.task_id for x in sent))))
    else:
        op = console.operations.start("dlq.purge", user.name, user.role, f"{words}, deleted for good",
                                      len(targets), in_batches(targets, store.purge))
    return RedirectResponse(f"/operations/{op.id}", status_code=303)


@change
async def dlq_requeue(request: Request, form: FormData) -> Response:
    return await dlq_change(request, form, "requeue")


@change
async def dlq_purge(request: Request, form: FormData) -> Response:
    return await dlq_change(request, form, "purge")


async def operation(request: Request) -> Response:
    op = console_of(request).operations.get(text(request.path_params["op_id"]))
    if op is None:
        return problem(request, 404, "no such operation (this console was restarted?): see the audit trail")
    if wants_json(request):
        return JSONResponse(op.model_dump())
    template = "operation_panel.html" if request.url.path.endswith("/panel") else "operation.html"
    return render(request, template, op=op)


# -- trace ---------------------------------------------------------------------------------------
async def trace_page(request: Request) -> Response:
    console = console_of(request)
    query = text(request.query_params.get("q"))[:64]
    found = await run_in_threadpool(trace, console.rt, query) if query else None
    data = None
    if found is not None:
        data = found.model_dump(mode="json")
        for name in ("dead_letter", "requeued_letter"):
            letter = getattr(found, name)
            data[name] = letter_view(letter) if letter is not None else None
    if wants_json(request):
        return JSONResponse(data if data is not None else {"error": "give ?q=<order_no or stockout_id>"},
                            status_code=200 if data is not None else 400)
    return render(request, "trace.html", query=query, t=found)


# -- backfill ------------------------------------------------------------------------------------
async def backfill_page(request: Request, error: str = "", status_code: int = 200, notice: str = "") -> Response:
    console = console_of(request)
    views = await run_in_threadpool(backfill_views, console.rt)
    views.reverse()  # newest first
    if wants_json(request):
        return JSONResponse([{**v.job.model_dump(), "progress": v.progress, "eta_s": v.eta_s} for v in views])
    alive, walks = await run_in_threadpool(beat_walks, console.rt)
    return render(request, "backfill.html", status_code, views=views[:100], error=error, notice=notice,
                  beat_alive=alive, beat_words=walks)


@change
async def backfill_start(request: Request, form: FormData) -> Response:
    """The CLI's guard rails (ops.backfill.plan): the whole --until day, cut at now, a long range asked for."""
    console = console_of(request)
    since, until = text(form.get("since")), text(form.get("until"))
    try:
        console.rt.mappings.get()  # the CLI's check: a mapping that validates
        planned = plan(since, until, max_days=console.rt.settings.backfill_max_days, names=("since", "until"))
    except ValueError as err:
        return await backfill_page(request, f"no job recorded: {err}", 400)
    if planned.too_long and form.get("confirm") != "yes":
        return render(request, "confirm.html", action="record the backfill", count=1,
                      question=f"Backfill {planned.days:.0f} days, {format_wire(planned.start)} → "
                               f"{format_wire(planned.end)}?",
                      words=f"more than BACKFILL_MAX_DAYS={console.rt.settings.backfill_max_days:g}: "
                            "a year off is a typo more often than a wish", mapping={}, malformed=[], same_mapping=0,
                      examples=[], hidden=[("since", since), ("until", until)], post_to="/backfill/start",
                      back="/backfill")
    job = await run_in_threadpool(start_backfill, console.rt, planned)
    user = request.state.user
    console.audit.record(user.name, user.role, "backfill.start", count=1, detail=f"{job.since} → {job.until}",
                         ids=[job.id])
    _, walks = await run_in_threadpool(beat_walks, console.rt)
    notice = f"backfill job {job.id} recorded: {job.since} → {job.until}; {walks}"
    return await backfill_page(request, planned.cut, notice=notice)


@change
async def backfill_cancel(request: Request, form: FormData) -> Response:
    console = console_of(request)
    job_id = text(request.path_params["job_id"])
    job = await run_in_threadpool(JobStore(console.rt.redis, console.prefix).cancel, job_id)
    if job is None:
        return problem(request, 404, f"no backfill job {job_id!r}")
    user = request.state.user
    console.audit.record(user.name, user.role, "backfill.cancel", count=1,
                         detail=f"{job.since} → {job.until} at cursor {job.cursor or '—'}", ids=[job.id])
    return RedirectResponse("/backfill", status_code=303)


# -- mapping -------------------------------------------------------------------------------------
async def mapping_page(request: Request) -> Response:
    console = console_of(request)
    rt = console.rt
    in_force = mapping_in_force(request)
    recorded = (await run_in_threadpool(Snapshot.read, rt.redis, console.prefix)).mapping_problem
    content: dict[str, Any] | None = None
    if in_force["ok"]:
        content = rt.mappings.get().model_dump(mode="json")
    number = text(request.query_params.get("no"))[:64]
    shown = None
    if number:
        try:
            shown = (await run_in_threadpool(preview, rt, number)).model_dump()
        except StockoutSyncError as err:
            shown = {"stockout_no": number, "found": False, "payload": None, "error": f"WDT could not be asked: {err}"}
    data = {"in_force": in_force, "workers_report": recorded.model_dump() if recorded else None,
            "mapping": content, "preview": shown}
    if wants_json(request):
        return JSONResponse(data)
    return render(request, "mapping.html", data=data, number=number,
                  mapping_json=json.dumps(content, ensure_ascii=False, indent=2) if content else "",
                  preview_json=json.dumps(shown["payload"], ensure_ascii=False, indent=2)
                  if shown and shown.get("payload") else "")


# -- reconcile -----------------------------------------------------------------------------------
def report_summary(n: int, report: dict[str, Any]) -> dict[str, Any]:
    keys = ("since", "until", "finished_at", "mismatches", "fetched", "eligible", "in_bip")
    summary = {k: report.get(k) for k in keys}
    for name in ("missing", "duplicated", "changed", "unknown"):
        summary[name] = report.get(f"{name}_total", len(report.get(name) or []))
    return {"n": n, **summary}


async def reconcile_page(request: Request) -> Response:
    console = console_of(request)
    reports = await run_in_threadpool(recent_reports, console.rt.redis, console.prefix, REPORTS_KEPT)
    rows = [report_summary(n, r) for n, r in enumerate(reports)]
    if wants_json(request):
        return JSONResponse(rows)
    return render(request, "reconcile.html", rows=rows)


async def load_report(request: Request) -> tuple[int, dict[str, Any] | None]:
    console = console_of(request)
    try:
        n = int(request.path_params["n"])
    except ValueError:
        return -1, None
    reports = await run_in_threadpool(recent_reports, console.rt.redis, console.prefix, REPORTS_KEPT)
    return n, reports[n] if 0 <= n < len(reports) else None


async def reconcile_report(request: Request) -> Response:
    n, report = await load_report(request)
    if report is None:
        return problem(request, 404, "no such reconcile report (they are numbered newest first, from 0)")
    if wants_json(request):
        return JSONResponse(report)
    return render(request, "report.html", n=n, report=report, summary=report_summary(n, report))


@change
async def reconcile_requeue(request: Request, form: FormData) -> Response:
    console = console_of(request)
    n, report = await load_report(request)
    if report is None:
        return problem(request, 404, "no such reconcile report")
    mapping = mapping_in_force(request)
    if not mapping["ok"]:
        return problem(request, 409, f"nothing requeued: the mapping file does not validate ({mapping['error']})")
    listed = [m for m in report.get("missing") or [] if m.get("state") != "dead_letter"]
    since, until = str(report.get("since", "")), str(report.get("until", ""))
    words = (f"reconcile {since} → {until} checked again; what is still proven missing in BIP is published "
             f"through {mapping_words(mapping)}")
    if form.get("confirm") != "yes":
        return render(request, "confirm.html", action="requeue the proven-missing", count=len(listed),
                      question=f"Requeue what is proven missing in BIP? The report listed {len(listed)}.",
                      words=words, mapping=mapping, malformed=[], same_mapping=0,
                      examples=[m.get("stockout_id", "") for m in listed[:20]], hidden=[],
                      post_to=f"/reconcile/{n}/requeue", back=f"/reconcile/{n}")

    def work() -> Iterator[list[str]]:
        # what the CLI's `reconcile --requeue-missing` does: acting only on what this run proves again
        from producer.reconcile.run import Reconcile
        from shared.queue.publisher import publish_stockout

        job = Reconcile(console.rt, keep_raw=True)
        fresh = job.run(parse_given(since, "since"), parse_given(until, "until"))
        yield job.requeue_missing(fresh, publish_stockout)

    user = request.state.user
    op = console.operations.start("reconcile.requeue", user.name, user.role, words, len(listed), work)
    return RedirectResponse(f"/operations/{op.id}", status_code=303)


# -- audit ---------------------------------------------------------------------------------------
async def audit_page(request: Request) -> Response:
    console = console_of(request)
    page = page_number(request)
    entries = await run_in_threadpool(console.audit.recent, 100, page * 100)
    total = await run_in_threadpool(console.audit.count)
    if wants_json(request):
        return JSONResponse({"total": total, "page": page, "entries": [e.model_dump() for e in entries]})
    return render(request, "audit.html", entries=entries, total=total, page=page, pages=(total + 99) // 100)


def routes() -> list[BaseRoute]:
    both = [  # (path, endpoint): the page, and its JSON under /api
        ("/", overview), ("/deadletters", dead_letters), ("/deadletters/{name:path}", dead_letter),
        ("/operations/{op_id}", operation), ("/trace", trace_page), ("/backfill", backfill_page),
        ("/mapping", mapping_page), ("/reconcile", reconcile_page), ("/reconcile/{n}", reconcile_report),
        ("/audit", audit_page),
    ]
    found: list[BaseRoute] = [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout_route, methods=["POST"]),
        Route("/overview/panel", overview, methods=["GET"]),
        Route("/operations/{op_id}/panel", operation, methods=["GET"]),
        Route("/deadletters/requeue", dlq_requeue, methods=["POST"]),
        Route("/deadletters/purge", dlq_purge, methods=["POST"]),
        Route("/backfill/start", backfill_start, methods=["POST"]),
        Route("/backfill/{job_id}/cancel", backfill_cancel, methods=["POST"]),
        Route("/reconcile/{n}/requeue", reconcile_requeue, methods=["POST"]),
    ]
    for path, endpoint in both:
        found.append(Route(path, endpoint, methods=["GET"]))
        found.append(Route("/api/status" if path == "/" else f"/api{path}", endpoint, methods=["GET"]))
    found.append(Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"))
    return found
