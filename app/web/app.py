"""The console's WSGI application: pages, actions and the JSON API, on one ledger and one Redis.

Pages are server-rendered (jinja2, autoescaped) and work without JavaScript; app/web/static/console.js only
refreshes parts of them in place. Every action is a POST with a CSRF token and a confirmation step, goes through
app.operations (the same code as the CLI, which records it in the ledger's audit trail) and is refused in
read-only mode. See docs/console.md.
"""
from __future__ import annotations

import datetime
import logging
import os
import traceback
import urllib.parse
from typing import Any, Callable, Iterable

import jinja2
import peewee
import redis

import config
from app import catalog, db, jobids, ledger, operations, producer
from app.codec import NotJSON
from app.jobview import ago
from app.schema import open_ledger
from app.models import STATES
from app.web import queries
from app.web.auth import CSRF_COOKIE, SESSION_COOKIE, Guard
from app.web.http import HTTPError, Request, Response, Router, json_response, local_path, redirect
from helpers.masking import mask_text, secret_values

log = logging.getLogger("nightshift.web")
HERE = os.path.dirname(os.path.abspath(__file__))
STATIC = os.path.join(HERE, "static")
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon"}
BULK_CAP = 10_000   # jobs one bulk retry or discard acts on at most (the confirmation says so)
SECURITY_HEADERS = [
    ("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                                "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("X-Frame-Options", "DENY"),
]
ACTIONS = {
    "retry": "Retry", "cancel": "Cancel", "discard": "Discard", "bulk-retry": "Retry all matching",
    "bulk-discard": "Discard all matching", "pause": "Pause queue", "resume": "Resume queue",
    "run-now": "Run now",
}


def _since(value: str | None, stamp: str | None = None) -> str:
    if not value:
        return "-"
    when = queries._dt(value.rstrip("Z"))
    now = queries._dt(stamp.rstrip("Z")) if stamp else queries.now()
    return ago((now - when).total_seconds()) + " ago"


def _mb(value: int | None) -> str:
    return f"{value / 1048576:.0f} MB" if value else "-"


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _short_time(value: str | None) -> str:
    return value[:19].replace("T", " ") if value else "-"


class Console:
    """The console for one process: settings, guard, templates and routes. Call it as a WSGI application."""

    def __init__(self, settings: config.Settings) -> None:
        self.settings = settings
        self.readonly = self.settings.web_readonly
        self.guard = Guard(self.settings.web_token)
        self.secrets = secret_values(self.settings)
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(os.path.join(HERE, "templates")),
            autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
        self.templates.filters.update(ago=ago, since=_since, mb=_mb, secs=_secs, short=_short_time,
                                      short_id=jobids.short,
                                      urlencode_dict=lambda d: urllib.parse.urlencode(d))
        self.router = Router()
        r = self.router.add
        r("GET", "/", self.page_overview)
        r("GET", "/jobs", self.page_jobs)
        r("GET", "/jobs/{job_id}", self.page_job)
        r("GET", "/schedule", self.page_schedule)
        r("GET", "/login", self.page_login)
        r("POST", "/login", self.do_login)
        r("POST", "/logout", self.do_logout)
        r("POST", "/actions/{action}", self.do_action)
        r("GET", "/static/{name}", self.static)
        r("GET", "/healthz", lambda request: Response("ok\n", content_type="text/plain; charset=utf-8"))
        r("GET", "/api/overview", self.api_overview)
        r("GET", "/api/jobs", self.api_jobs)
        r("POST", "/api/jobs", self.api_submit)
        r("GET", "/api/jobs/{job_id}", self.api_job)
        r("POST", "/api/jobs/{job_id}/{action}", self.api_job_action)
        r("POST", "/api/queues/{queue}/{action}", self.api_queue_action)
        r("GET", "/api/schedule", self.api_schedule)
        r("POST", "/api/schedule/{task}/run", self.api_run_now)
        r("GET", "/api/actions", self.api_actions)

    # -- WSGI ------------------------------------------------------------------------------------------------

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        request = Request(environ)
        api = request.path.startswith("/api/")
        try:
            self.guard.check_host(request)
            handler, request.params = self.router.match(request.method, request.path)
            public = request.path in ("/login", "/healthz") or request.path.startswith("/static/")
            if not public and not self.guard.allowed(request):
                if api or request.method != "GET":
                    raise HTTPError(401, "a valid token is required (Authorization: Bearer TOKEN)",
                                    [("WWW-Authenticate", 'Bearer realm="nightshift"')])
                target = request.path + ("?" + environ["QUERY_STRING"] if environ.get("QUERY_STRING") else "")
                response = redirect("/login?" + urllib.parse.urlencode({"next": target}))
            else:
                response = handler(request)
        except HTTPError as exc:
            response = self.error(request, exc.status, exc.message, api)
            response.headers += exc.headers
        except (peewee.OperationalError, peewee.InterfaceError, redis.RedisError) as exc:
            what = "Redis" if isinstance(exc, redis.RedisError) else "the ledger"
            detail = mask_text(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                               self.secrets)
            log.warning("console: %s failed: %s", what, detail)
            response = self.error(request, 503, f"{what} does not answer: {detail}", api)
        except Exception:  # noqa: BLE001 - one broken page must not stop the console; the log has the details
            log.error("console: %s %s failed:\n%s", request.method, request.path,
                      mask_text(traceback.format_exc(), self.secrets))
            response = self.error(request, 500, "internal error (see the console's log)", api)
        response.headers += SECURITY_HEADERS
        if not request.path.startswith("/static/"):
            response.headers.append(("Cache-Control", "no-store"))
        if request.method == "HEAD":
            response.body = b""
        return response.wsgi(start_response)

    def error(self, request: Request, status: int, message: str, api: bool) -> Response:
        if api:
            return json_response({"error": message}, status)
        return self.render(request, "error.html", {"status": status, "error": message}, status)

    # -- rendering -------------------------------------------------------------------------------------------

    def render(self, request: Request, name: str, context: dict, status: int = 200) -> Response:
        browser, new = self.guard.browser_id(request)
        context = dict({"message": ""}, **context, csrf=self.guard.csrf_token(browser), readonly=self.readonly,
                       auth=self.guard.required, path=request.path, queue_default=self.settings.queue)
        response = Response(self.templates.get_template(name).render(**context), status)
        if new:
            response.set_cookie(CSRF_COOKIE, browser, secure=self._https(request))
        return response

    @staticmethod
    def _https(request: Request) -> bool:
        return request.environ.get("wsgi.url_scheme") == "https"

    def fragment(self, request: Request) -> bool:
        """The live refresh asks for the page's body only (console.js)."""
        return request.query.get("fragment") == "1"

    # -- pages -----------------------------------------------------------------------------------------------

    def page_overview(self, request: Request) -> Response:
        data = queries.overview(self.settings)
        return self.render(request, "overview_body.html" if self.fragment(request) else "overview.html",
                           {"data": data, "message": request.query.get("message", "")})

    def page_jobs(self, request: Request) -> Response:
        filters = queries.Filters.from_query(request.query)
        limit = _int(request.query.get("limit"), queries.PAGE_SIZE)
        page = queries.job_page(filters, self.secrets, request.query.get("before"), limit)
        tasks = sorted(catalog.task_classes())
        return self.render(request, "jobs.html", {
            "page": page, "filters": filters, "states": STATES, "tasks": tasks,
            "queues": [queries.NO_QUEUE if q is None else q for q in queries.queue_names(self.settings)],
            "next_query": urllib.parse.urlencode({**filters.as_query(), "before": page.next}) if page.next else "",
            "filter_query": urllib.parse.urlencode(filters.as_query()),
            "message": request.query.get("message", ""), "bulk_cap": BULK_CAP})

    def page_job(self, request: Request) -> Response:
        data = queries.job_detail(request.params["job_id"], self.secrets)
        if data is None:
            raise HTTPError(404, f"no job {request.params['job_id']!r} in the ledger")
        return self.render(request, "job.html", {"job": data, "message": request.query.get("message", "")})

    def page_schedule(self, request: Request) -> Response:
        return self.render(request, "schedule.html", {"rows": queries.schedule(self.settings),
                                                      "message": request.query.get("message", "")})

    def page_login(self, request: Request) -> Response:
        if not self.guard.required:
            return redirect(local_path(request.query.get("next")))
        return self.render(request, "login.html", {"next": local_path(request.query.get("next")), "failed": False})

    def do_login(self, request: Request) -> Response:
        self.guard.check_csrf(request, request.field("csrf"))
        target = local_path(request.field("next"))
        if not self.guard.required:
            return redirect(target)
        if not self.guard.token_matches(request.field("token")):
            log.warning("console: failed login from %s", request.remote)
            return self.render(request, "login.html", {"next": target, "failed": True}, 401)
        response = redirect(target)
        response.set_cookie(SESSION_COOKIE, self.guard.new_session(), self.guard.session_seconds,
                            secure=self._https(request))
        return response

    def do_logout(self, request: Request) -> Response:
        self.guard.check_csrf(request, request.field("csrf"))
        response = redirect("/login" if self.guard.required else "/")
        response.set_cookie(SESSION_COOKIE, "", 0, secure=self._https(request))
        return response

    def static(self, request: Request) -> Response:
        name = request.params["name"]
        ext = os.path.splitext(name)[1]
        path = os.path.join(STATIC, name)
        if "/" in name or "\\" in name or name.startswith(".") or ext not in STATIC_TYPES or not os.path.isfile(path):
            raise HTTPError(404, "no such file")
        with open(path, "rb") as handle:
            return Response(handle.read(), content_type=STATIC_TYPES[ext],
                            headers=[("Cache-Control", "public, max-age=300")])

    # -- actions (pages) -------------------------------------------------------------------------------------

    def who(self, request: Request) -> str:
        return f"web from {request.remote}"

    def do_action(self, request: Request) -> Response:
        """Every action: POST with the CSRF token; without `confirm=yes` the confirmation page comes back with the
        same fields, and only its own POST acts."""
        action = request.params["action"]
        if action not in ACTIONS:
            raise HTTPError(404, f"no action {action!r}")
        self.guard.check_csrf(request, request.field("csrf"))
        if self.readonly:
            raise HTTPError(403, "this console is read-only (NIGHTSHIFT_WEB_READONLY)")
        fields = {name: values[-1] for name, values in request.form().items() if name not in ("csrf", "confirm")}
        ids = [i for i in request.form().get("id", []) if i]
        back = local_path(request.field("next"), "/")
        filters = queries.Filters.from_query(fields) if action.startswith("bulk-") else None
        if action.startswith("bulk-") and filters is not None:
            filters.state = "dead"  # only dead jobs can be retried or discarded
        if request.field("confirm") != "yes":
            return self.render(request, "confirm.html", {
                "action": action, "title": ACTIONS[action], "fields": fields, "ids": ids, "back": back,
                "summary": self.describe(action, fields, ids, filters)})
        message = self.act(action, fields, ids, filters, self.who(request))
        return redirect(_with_message(back, message))

    def describe(self, action: str, fields: dict, ids: list[str], filters: queries.Filters | None) -> str:
        if action in ("retry", "cancel", "discard"):
            return f"{ACTIONS[action]} {len(ids)} job(s): {', '.join(jobids.short(i) for i in ids[:20])}" \
                   + (" ..." if len(ids) > 20 else "")
        if filters is not None:
            matched, capped = queries.matching_ids(filters, BULK_CAP)
            shown = ", ".join(f"{k}={v}" for k, v in filters.as_query().items())
            return (f"{ACTIONS[action]}: {len(matched)}{'+' if capped else ''} dead job(s) match {shown}"
                    + (f" (this acts on the first {BULK_CAP})" if capped else ""))
        if action in ("pause", "resume"):
            return f"{ACTIONS[action]} {fields.get('queue', '')!r}" + (
                ": running jobs finish, no new job starts until it is resumed" if action == "pause" else "")
        return f"Queue one run of periodic task {fields.get('task', '')!r} now (its schedule is unchanged)"

    def act(self, action: str, fields: dict, ids: list[str], filters: queries.Filters | None, who: str) -> str:
        """Do it, through app.operations; returns the line shown after the redirect."""
        if filters is not None:
            ids, _ = queries.matching_ids(filters, BULK_CAP)
            action = action.removeprefix("bulk-")
        if action in ("retry", "cancel", "discard"):
            jobs = [job for job in (ledger.get(i) for i in ids) if job is not None]
            outcome = getattr(operations, action)(jobs, who)
            done = {"retry": "retried", "cancel": "canceled", "discard": "discarded"}[action]
            text = f"{done} {len(outcome.done)} job(s)"
            if outcome.refused:
                text += f"; refused {len(outcome.refused)}: " + "; ".join(
                    f"{jobids.short(i)} {why}" for i, why in outcome.refused[:5])
            if outcome.delivery_error:
                text += " (Redis unreachable: the ledger has them, recovery delivers them)"
            return text
        if action in ("pause", "resume"):
            queue = fields.get("queue", "")
            if not queue or queue == queries.NO_QUEUE:
                raise HTTPError(400, "name a queue")
            was = operations.set_paused(queue, action == "pause", who)
            return f"queue {queue!r} " + (("was already paused" if was else "paused") if action == "pause"
                                          else ("resumed" if was else "was not paused"))
        task = fields.get("task", "")
        try:
            submission = operations.run_now(task, who)
        except catalog.UnknownTaskName as exc:
            raise HTTPError(404, str(exc)) from None
        return f"{task}: queued job {submission.ids[0]}"

    # -- API -------------------------------------------------------------------------------------------------

    def api_overview(self, request: Request) -> Response:
        return json_response(queries.overview(self.settings))

    def api_jobs(self, request: Request) -> Response:
        filters = queries.Filters.from_query(request.query)
        if request.query.get("state") and not filters.state:
            raise HTTPError(400, f"state must be one of {', '.join(STATES)}")
        page = queries.job_page(filters, self.secrets, request.query.get("before"),
                                _int(request.query.get("limit"), 50))
        return json_response({"jobs": page.jobs, "next": page.next, "partial": page.partial,
                              "scanned": page.scanned})

    def api_job(self, request: Request) -> Response:
        data = queries.job_detail(request.params["job_id"], self.secrets)
        if data is None:
            raise HTTPError(404, "no such job")
        return json_response(data)

    def api_write(self, request: Request) -> None:
        """A POST of the API: refused read-only; a session cookie (not a Bearer token) also needs the CSRF
        header, as the console's own scripts would send it."""
        if self.readonly:
            raise HTTPError(403, "this console is read-only (NIGHTSHIFT_WEB_READONLY)")
        if self.guard.required and not self.guard.bearer_ok(request):
            self.guard.check_csrf(request, request.header("X-CSRF-Token"))

    def api_submit(self, request: Request) -> Response:
        self.api_write(request)
        body = request.json()
        if not isinstance(body, dict) or not isinstance(body.get("task"), str):
            raise HTTPError(400, 'send {"task": NAME, "arguments": {...}, "delay": SECONDS, "key": KEY}')
        unknown = set(body) - {"task", "arguments", "delay", "key", "eta", "priority", "retries"}
        if unknown:
            raise HTTPError(400, f"unknown field(s): {', '.join(sorted(unknown))}")
        arguments = body.get("arguments") or {}
        if not isinstance(arguments, dict):
            raise HTTPError(400, "arguments must be a JSON object")
        eta = body.get("eta")
        try:
            if eta is not None:
                if not isinstance(eta, str):
                    raise producer.BadOption("eta must be an ISO-8601 time")
                try:
                    eta = datetime.datetime.fromisoformat(eta.replace("Z", "+00:00"))
                except ValueError:
                    raise producer.BadOption(f"eta {eta!r} is not an ISO-8601 time") from None
            when = producer.check_options(body.get("delay"), eta, body.get("priority"), body.get("retries"),
                                          body.get("key"))
            task = producer.build_task(body["task"], arguments, priority=body.get("priority"),
                                       retries=body.get("retries"), when=when)
            submission = producer.submit_tasks([task], key=body.get("key"), warn=False)
        except (catalog.UnknownTaskName, catalog.BadArguments, NotJSON, producer.BadOption) as exc:
            raise HTTPError(400, str(exc)) from None
        answer: dict[str, Any] = {"id": submission.ids[0]}
        if submission.existing:
            answer["existing"] = True
        if not submission.delivered:
            answer["delivered"] = False  # recorded; recovery delivers it when Redis is back
        return json_response(answer, 200 if submission.existing else 201)

    def api_job_action(self, request: Request) -> Response:
        action = request.params["action"]
        if action not in ("retry", "cancel", "discard"):
            raise HTTPError(404, f"no action {action!r} (retry, cancel, discard)")
        self.api_write(request)
        job = ledger.get(request.params["job_id"])
        if job is None:
            raise HTTPError(404, "no such job")
        outcome = getattr(operations, action)([job], self.who(request))
        body = {"done": outcome.done, "refused": [{"id": i, "reason": why} for i, why in outcome.refused]}
        if outcome.delivery_error:
            body["delivered"] = False
        return json_response(body, 200 if outcome.done else 409)

    def api_queue_action(self, request: Request) -> Response:
        action = request.params["action"]
        if action not in ("pause", "resume"):
            raise HTTPError(404, f"no action {action!r} (pause, resume)")
        self.api_write(request)
        was = operations.set_paused(request.params["queue"], action == "pause", self.who(request))
        return json_response({"queue": request.params["queue"], "paused": action == "pause", "was_paused": was})

    def api_schedule(self, request: Request) -> Response:
        return json_response({"tick_seconds": self.settings.tick_seconds, "tasks": queries.schedule(self.settings)})

    def api_run_now(self, request: Request) -> Response:
        self.api_write(request)
        try:
            submission = operations.run_now(request.params["task"], self.who(request))
        except catalog.UnknownTaskName as exc:
            raise HTTPError(404, str(exc)) from None
        return json_response({"id": submission.ids[0]}, 201)

    def api_actions(self, request: Request) -> Response:
        target = request.query.get("target") or None
        rows = ledger.actions(target, _int(request.query.get("limit"), 50, 1000))
        return json_response({"actions": [{"at": queries.iso(a.at), "action": a.action, "target": a.target,
                                           "who": a.who, "detail": a.detail} for a in rows]})


def _int(value: str | None, default: int, maximum: int = queries.MAX_PAGE_SIZE) -> int:
    try:
        return max(1, min(int(value), maximum)) if value else default
    except ValueError:
        raise HTTPError(400, f"{value!r} is not a number") from None


def _with_message(path: str, message: str) -> str:
    base, _, query = path.partition("?")
    params = [(k, v) for k, v in urllib.parse.parse_qsl(query) if k != "message"] + [("message", message)]
    return base + "?" + urllib.parse.urlencode(params)


def create_app(settings: config.Settings) -> Console:
    """The console as a WSGI application on the ledger and Redis of `settings` (the entry point's); the task
    catalog is loaded so the console can check submitted jobs and show periodic tasks."""
    open_ledger(settings.database_url)
    db.use_small_page_cache()  # one connection per server thread
    catalog.load_task_modules(settings.task_modules)
    return Console(settings)
