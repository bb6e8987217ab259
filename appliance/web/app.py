"""The bedside page's HTTP service: the JSON API (documented at /api/openapi.json), the live event
stream, result files for the 3D view, feedback, and the built page itself.

Every route but `/api/health` and the login form needs the token (bearer header) or a session cookie;
FastAPI's own docs routes are off because they would be open. Handlers only read the database, except
feedback; the DICOM threads never wait on the web.
"""

from __future__ import annotations

import html
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from pydantic import BaseModel, Field

from appliance.config import AppConfig
from appliance.display import DISPLAY_CT_FILE, display_mesh_file
from appliance.feedback import MAX_REASON_CHARS, FeedbackError, FeedbackStore
from appliance.jobs import JobQueue
from appliance.status import runtime_record
from appliance.web.auth import SESSION_COOKIE, LoginThrottle, Sessions
from appliance.web.events import SeriesFeed
from appliance.web.views import list_jobs, list_series, list_studies
from dicom_node.audit import MINOR_FAILURE, AuditTrail, Participant
from dicom_node.database import Database
from dicom_node.index import InstanceIndex
from dicom_node.logfmt import log_event
from dicom_node.spool import free_bytes

logger = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).resolve().parent / "static"
LOGIN_PAGE = (Path(__file__).resolve().parent / "login.html").read_text()
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}
VERSION = "0.1.0"


@dataclass(frozen=True)
class WebContext:
    """What the web service needs from the node: the config, the token, and a view of its workers."""

    config: AppConfig
    token: str
    static_dir: Path = STATIC_DIR
    https: bool = False
    workers_alive: Any = None  # Callable[[], tuple[int, int]] (alive, configured) or None outside a node
    clock: Any = time.time  # the node's clock (dicom_node.clock), which stamps what the page shows
    audit: AuditTrail | None = None  # the node's audit trail (logins are audited); None: this app's own


class FeedbackIn(BaseModel):
    verdict: Literal["accept", "flag"]
    segment: str | None = Field(None, max_length=64)
    reason: str = Field("", max_length=MAX_REASON_CHARS)


def create_app(ctx: WebContext) -> FastAPI:
    config = ctx.config
    db = Database(config.database_path)
    InstanceIndex(db)  # the tables the views read exist even before the first instance
    jobs = JobQueue(db)
    feedback = FeedbackStore(db)
    from appliance.node import make_outbox  # the node imports this module: import its helper late
    outbox = make_outbox(db, config)
    audit = ctx.audit or AuditTrail(db, clock=ctx.clock)
    sessions = Sessions(ctx.token, config.web.session_hours * 3600.0)
    throttle = LoginThrottle()
    results_dir = config.results_dir
    feed = SeriesFeed(config.database_path, lambda: {"series": list_series(db.connection, results_dir)})
    app = FastAPI(title="isonode bedside API", version=VERSION, docs_url=None, redoc_url=None,
                  openapi_url=None)

    def authorized(request: Request) -> bool:
        header = request.headers.get("authorization", "")
        if header[:7].lower() == "bearer " and sessions.token_matches(header[7:]):
            return True
        return sessions.valid(request.cookies.get(SESSION_COOKIE))

    def require_login(request: Request) -> None:
        if not authorized(request):
            raise HTTPException(401, "login required", headers={"WWW-Authenticate": "Bearer"})

    def client(request: Request) -> str:
        return request.client.host if request.client else "unknown"

    def login_page(error: str = "", status: int = 401) -> HTMLResponse:
        return HTMLResponse(LOGIN_PAGE.replace("{error}", html.escape(error)), status_code=status,
                            headers={"Cache-Control": "no-store"})

    @app.middleware("http")
    async def security_headers(request: Request, call_next):  # noqa: ANN001, ANN202 - starlette signature
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        if ctx.https:
            response.headers["Strict-Transport-Security"] = "max-age=31536000"
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.get("/api/health", tags=["open"])
    def health() -> JSONResponse:
        """Open to monitors: whether the node can work, never anything about patients."""
        checks: dict[str, str] = {}
        try:
            db.connection.execute("SELECT 1 FROM jobs LIMIT 1").fetchall()
            checks["database"] = "ok"
        except Exception:
            checks["database"] = "error"
        free = free_bytes(config.data_dir)
        checks["disk"] = "ok" if free >= config.storage.min_free_mb * 1024 * 1024 else "low"
        if ctx.workers_alive is not None:
            alive, wanted = ctx.workers_alive()
            checks["workers"] = "ok" if alive == wanted else f"{alive} of {wanted} running"
        status = "ok" if all(v == "ok" for v in checks.values()) else "degraded"
        if checks["database"] != "ok":
            status = "down"
        return JSONResponse({"status": status, "service": "isonode", "version": VERSION, "checks": checks},
                            status_code=503 if status == "down" else 200)

    @app.get("/login", include_in_schema=False)
    def login_form(request: Request) -> Any:
        return RedirectResponse("/", 303) if authorized(request) else login_page(status=200)

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Any:
        who = client(request)
        if throttle.blocked(who):
            log_event(logger, "web.login_refused", level=logging.WARNING, client=who, reason="too many failures")
            return login_page("Too many wrong tokens: wait a minute.", 429)
        body = (await request.body())[:4096].decode("utf-8", "replace")
        token = (parse_qs(body).get("token") or [""])[0]
        participants = [Participant("bedside page user", who, True, "Source")]
        if not sessions.token_matches(token):
            throttle.failed(who)
            log_event(logger, "web.login_failed", level=logging.WARNING, client=who)
            audit.record("web_login", outcome=MINOR_FAILURE, participants=participants, reason="wrong token")
            return login_page("Wrong token.")
        log_event(logger, "web.login", client=who)
        audit.record("web_login", participants=participants)
        response = RedirectResponse("/", 303)
        response.set_cookie(SESSION_COOKIE, sessions.issue(), max_age=int(sessions.lifetime_s), httponly=True,
                            samesite="strict", secure=ctx.https, path="/")
        return response

    @app.post("/logout", include_in_schema=False)
    def logout() -> Any:
        response = RedirectResponse("/login", 303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @app.get("/", include_in_schema=False)
    def page(request: Request) -> Any:
        if not authorized(request):
            return login_page()
        index = ctx.static_dir / "index.html"
        if not index.is_file():
            return HTMLResponse("<h1>The page is not built</h1><p>Run <code>make web</code>.</p>", 503)
        return FileResponse(index, headers={"Cache-Control": "no-store"})

    @app.get("/static/{name:path}", include_in_schema=False, dependencies=[Depends(require_login)])
    def static(name: str) -> FileResponse:
        root = ctx.static_dir.resolve()
        path = (root / name).resolve()
        if not path.is_file() or root not in path.parents:
            raise HTTPException(404, "no such file")
        return FileResponse(path, headers={"Cache-Control": "private, max-age=300"})

    api = [Depends(require_login)]

    @app.get("/api/openapi.json", dependencies=api, include_in_schema=False)
    def openapi() -> dict:
        return app.openapi()

    @app.get("/api/studies", dependencies=api)
    def studies_list(limit: int = Query(50, ge=1, le=500)) -> dict:
        """Studies with received series, newest activity first, with the ids of their series."""
        return {"studies": list_studies(db.connection, limit=limit)}

    @app.get("/api/studies/{study_id}", dependencies=api)
    def study_one(study_id: int) -> dict:
        found = list_studies(db.connection, study_id=study_id)
        if not found:
            raise HTTPException(404, f"no study {study_id}")
        return found[0]

    @app.get("/api/series", dependencies=api)
    def series_list(limit: int = Query(50, ge=1, le=500)) -> dict:
        """Recent series versions, newest activity first, each with its study and its jobs."""
        return {"series": list_series(db.connection, results_dir, limit=limit)}

    @app.get("/api/series/{series_id}", dependencies=api)
    def series_one(series_id: int) -> dict:
        found = list_series(db.connection, results_dir, series_id=series_id)
        if not found:
            raise HTTPException(404, f"no series {series_id}")
        return found[0]

    @app.get("/api/jobs", dependencies=api)
    def jobs_list(limit: int = Query(100, ge=1, le=1000)) -> dict:
        """Jobs, newest first, with per-stage progress, results and deliveries."""
        return {"jobs": list_jobs(db.connection, results_dir, limit=limit)}

    def one_job(job_id: int) -> dict:
        found = list_jobs(db.connection, results_dir, job_id=job_id)
        if not found:
            raise HTTPException(404, f"no job {job_id}")
        return found[0]

    @app.get("/api/jobs/{job_id}", dependencies=api)
    def job(job_id: int) -> dict:
        return one_job(job_id)

    def result_file(job_id: int, name: str) -> FileResponse:
        record = jobs.get(job_id)
        if record is None or record.state != "done" or not record.result:
            raise HTTPException(404, f"job {job_id} has no result")
        path = results_dir / record.result.get("result_dir", "") / name
        if not path.is_file():
            raise HTTPException(404, f"job {job_id} has no file {name}")
        return FileResponse(path, media_type="application/octet-stream",
                            headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/jobs/{job_id}/ct.nii.gz", dependencies=api)
    def display_ct(job_id: int) -> FileResponse:
        """The CT for display: gzipped NIfTI-1, int16 HU, about 256 voxels in plane, RAS sform."""
        return result_file(job_id, DISPLAY_CT_FILE)

    @app.get("/api/jobs/{job_id}/meshes/{number}.mz3", dependencies=api)
    def display_mesh(job_id: int, number: int) -> FileResponse:
        """One segment's surface as gzipped MZ3 in the CT's RAS millimetres (numbered as in the result)."""
        return result_file(job_id, display_mesh_file(number))

    @app.get("/api/jobs/{job_id}/files/{name}", dependencies=api)
    def download(job_id: int, name: str) -> FileResponse:
        """A file of the result series (Surface Segmentation, SEG, rendered view, STL/PLY)."""
        if "/" in name or name.startswith((".", "display_")):
            raise HTTPException(404, f"job {job_id} has no file {name}")
        return result_file(job_id, name)

    @app.get("/api/jobs/{job_id}/feedback", dependencies=api)
    def feedback_list(job_id: int) -> dict:
        one_job(job_id)
        return {"feedback": [_feedback_view(f) for f in feedback.list(job_id=job_id)]}

    @app.post("/api/jobs/{job_id}/feedback", dependencies=api, status_code=201)
    def feedback_add(job_id: int, body: FeedbackIn, request: Request) -> dict:
        """Accept the result, or flag one segment as wrong with a short reason (stored with the model)."""
        one_job(job_id)
        try:
            item = feedback.add(job_id, body.verdict, body.segment, body.reason, source="bedside page")
        except FeedbackError as exc:
            raise HTTPException(422, str(exc)) from exc
        log_event(logger, "web.feedback", job=job_id, verdict=item.verdict, segment=item.segment,
                  client=client(request))
        return _feedback_view(item)

    @app.get("/api/system", dependencies=api)
    def system() -> dict:
        """Backends chosen at start, model, disk, queue and outbox: what IT asks first."""
        runtime = runtime_record(config) or {}
        inference = runtime.get("inference") or {}
        chosen = inference.get("full") or inference.get("preview") or {}
        outbox_states = outbox.counts()
        return {
            "node": {"ae_title": config.node.ae_title, "port": config.node.port},
            "model": {k: runtime.get("bundle", {}).get(k) for k in ("name", "version")} if runtime else None,
            "backends": {"inference": chosen.get("backend"),
                         "inference_by_mode": {mode: c.get("backend") for mode, c in inference.items()},
                         "marching_cubes": (runtime.get("marching_cubes") or {}).get("backend")},
            "disk": {"free_bytes": free_bytes(config.data_dir),
                     "min_free_bytes": config.storage.min_free_mb * 1024 * 1024},
            "jobs": jobs.counts(),
            "outbox": {"pending": outbox_states.get("pending", 0), "sent": outbox_states.get("done", 0),
                       "failed": outbox_states.get("failed", 0)},
            "time": ctx.clock(),
        }

    @app.get("/api/events", dependencies=api)
    async def events(request: Request) -> StreamingResponse:
        """Server-sent events: `series` (the same JSON as /api/series) at once and after every change."""
        return StreamingResponse(feed.stream(request.is_disconnected), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    app.state.feed = feed
    return app


def _feedback_view(item: Any) -> dict:
    return {"id": item.id, "job_id": item.job_id, "verdict": item.verdict, "segment": item.segment,
            "reason": item.reason, "created_at": item.created_at,
            "model": {"name": item.model_name, "version": item.model_version}}
