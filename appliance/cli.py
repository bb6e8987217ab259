"""The `isonode` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from appliance.config import ConfigError, load_config, with_overrides
from dicom_node.logfmt import configure_logging


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, help="YAML config (default: firmware_config/isonode.yaml)")
    p.add_argument("--data-dir", type=Path, default=None, help="override storage.data_dir")


def _config(args: argparse.Namespace):  # noqa: ANN202 - AppConfig, imported lazily above
    config = load_config(args.config)
    web_port = 0 if getattr(args, "no_web", False) else getattr(args, "web_port", None)
    return with_overrides(config, port=getattr(args, "port", None), data_dir=args.data_dir,
                          destinations=getattr(args, "destination", None), web_port=web_port)


def _operator_clock(db):  # noqa: ANN001, ANN202 - Database -> SteadyClock, imported lazily
    """An operator action stamps rows no earlier than the newest stored time (the node's clock never is),
    so a retry made while the wall clock is still in 1970 is not taken as decades old."""
    from dicom_node.clock import SteadyClock, stored_time_floor

    return SteadyClock(stored_time_floor(db))


def _cmd_serve(args: argparse.Namespace) -> int:
    from appliance.inference.bundle import BundleError
    from appliance.node import DataDirLockedError, serve
    from dicom_node.tls import TlsConfigError

    config = _config(args)
    configure_logging(config.logging.level)
    try:
        return serve(config)
    except (DataDirLockedError, BundleError, ConfigError, TlsConfigError) as exc:
        print(f"isonode: {exc}", file=sys.stderr)
        return 1
    except (OSError, RuntimeError) as exc:
        print(f"isonode: cannot start: {exc}", file=sys.stderr)
        return 1


def _cmd_config_check(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    print(f"{args.file}: OK (AE {config.node.ae_title} on {config.node.bind_address}:{config.node.port},"
          f" data in {config.data_dir})")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from appliance.status import collect_status

    status = collect_status(_config(args))
    if args.json:
        print(json.dumps(status))
        return 0
    print(f"data dir:   {status['data_dir']}")
    print(f"stored:     {status['instances']} instances in {status['series']} series, {status['studies']} studies"
          f" ({status['stored_bytes'] / 1e6:.1f} MB; {status['free_bytes'] / 1e9:.1f} GB free)")
    print(f"receiving:  {status['series_receiving']} series")
    print("jobs:       " + ", ".join(f"{k} {v}" for k, v in status["jobs"].items()))
    for job in status["failed_jobs"]:
        print(f"  failed job {job['id']} series {job['series']} v{job['version']}: {job['error']}")
    print("deliveries: " + ", ".join(f"{k} {v}" for k, v in status["outbox"]["states"].items()))
    for dest, states in status["outbox"]["destinations"].items():
        print(f"  {dest}: " + ", ".join(f"{k} {v}" for k, v in states.items()))
    runtime = status.get("runtime")
    if runtime:
        b = runtime["bundle"]
        print(f"runtime:    model {b['name']} {b['version']}; marching cubes {runtime['marching_cubes']['backend']}"
              f" ({runtime['marching_cubes']['reason']}); {runtime['threads']} threads")
        for mode, inf in runtime["inference"].items():
            print(f"  {mode}: {inf['backend']}" + (f", {inf['precision']}" if inf["precision"] else ""))
            for key, why in (inf.get("not_eligible") or {}).items():
                print(f"    not eligible {key}: {why}")
    else:
        print("runtime:    not started yet (chosen when `isonode serve` starts)")
    return 0


def _cmd_series_complete(args: argparse.Namespace) -> int:
    from appliance.completion import SeriesCompletion
    from appliance.jobs import JobQueue
    from appliance.routing import Router
    from dicom_node.database import Database
    from dicom_node.index import InstanceIndex

    config = _config(args)
    db = Database(config.database_path)
    clock = _operator_clock(db)
    index = InstanceIndex(db, clock=clock)
    jobs = JobQueue(db, max_attempts=config.processing.max_attempts, clock=clock)
    router = Router(config, index, config.spool_dir)
    completion = SeriesCompletion(index, jobs, config.series, router.modes, clock=clock)
    version = completion.complete_now(args.series_uid)
    if version is None:
        print(f"isonode: series {args.series_uid} has no version receiving instances", file=sys.stderr)
        return 1
    print(f"series {args.series_uid} version {version} complete; job queued")
    return 0


def _cmd_jobs(args: argparse.Namespace) -> int:
    from appliance.jobs import JobQueue
    from dicom_node.database import Database

    db = Database(_config(args).database_path)
    jobs = JobQueue(db, clock=_operator_clock(db))
    if args.jobs_command == "retry":
        if not jobs.retry(args.job_id):
            print(f"isonode: job {args.job_id} is not failed", file=sys.stderr)
            return 1
        print(f"job {args.job_id} queued again")
        return 0
    for job in jobs.list(state=args.state, limit=args.limit):
        print(f"{job.id:6d} {job.state:8s} {job.mode:8s} attempts {job.attempts}/{job.max_attempts}"
              f" series {job.series_uid} v{job.series_version}" + (f"  {job.last_error}" if job.last_error else ""))
    return 0


def _cmd_feedback(args: argparse.Namespace) -> int:
    from appliance.feedback import FeedbackStore, export_document
    from appliance.jobs import JobQueue
    from dicom_node.database import Database

    db = Database(_config(args).database_path)
    JobQueue(db)  # feedback refers to jobs: their table exists first on a fresh database
    items = FeedbackStore(db).list(since=args.since)
    if args.feedback_command == "export":
        args.out.write_text(json.dumps(export_document(items), indent=1) + "\n")
        print(f"wrote {len(items)} feedback item(s) to {args.out}")
        return 0
    if args.json:
        print(json.dumps(export_document(items)["feedback"], indent=1))
        return 0
    for f in items:
        what = "accepted" if f.verdict == "accept" else f"flagged {f.segment}"
        print(f"{f.id:6d} job {f.job_id:<6d} {f.mode:8s} {f.model_name} {f.model_version}  {what}"
              + (f": {f.reason}" if f.reason else ""))
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    from dicom_node.audit import AuditTrail, Participant
    from dicom_node.database import Database

    config = _config(args)
    trail = AuditTrail(Database(config.database_path))
    since = _parse_since(args.since)
    records = trail.list(since=since)
    trail.record("audit_log_used", participants=[Participant(_operator(), "", True, "Source")],
                 records=len(records), since=args.since)  # reading the trail is itself audited (ATNA)
    if args.json:
        print(json.dumps([rec.as_json(rid) for rid, rec in records], indent=1))
        return 0
    for rid, rec in records:
        doc = rec.as_json(rid)
        who = ", ".join(f"{p['user_id']}@{p['address']}" if p["address"] else p["user_id"]
                        for p in doc["participants"])
        what = ", ".join(f"{o['kind']} {o['id']}" for o in doc["objects"])
        print(f"{doc['time']}  {rec.event:22s} outcome {rec.outcome:2d}  {who}" + (f"  [{what}]" if what else ""))
    return 0


def _operator() -> str:
    """Who ran the command (the local account), for the audit record of reading the trail."""
    import getpass

    try:
        return f"local user {getpass.getuser()}"
    except (KeyError, OSError):
        return "local user"


def _parse_since(text: str | None) -> float | None:
    """UNIX seconds or an ISO 8601 time (UTC when it names no zone)."""
    if text is None:
        return None
    from datetime import datetime, timezone

    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"--since {text!r}: expected UNIX seconds or an ISO 8601 time") from exc
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


def _cmd_outbox(args: argparse.Namespace) -> int:
    from appliance.node import make_outbox
    from dicom_node.database import Database

    config = _config(args)
    db = Database(config.database_path)
    outbox = make_outbox(db, config, _operator_clock(db))
    if args.outbox_command == "retry":
        if not outbox.retry(args.delivery_id):
            print(f"isonode: delivery {args.delivery_id} is not failed", file=sys.stderr)
            return 1
        print(f"delivery {args.delivery_id} queued again")
        return 0
    for d in outbox.list(state=args.state, limit=args.limit):
        print(f"{d.id:6d} {d.state:8s} {d.destination:12s} attempts {d.attempts} job {d.job_id} {d.relpath}"
              + (f"  {d.last_error}" if d.last_error else ""))
    return 0


def _runtime_for(args: argparse.Namespace, modes: tuple[str, ...]):  # noqa: ANN202 - Runtime or None
    from appliance.inference.bundle import BundleError
    from appliance.runtime import build_runtime

    try:
        return build_runtime(args.bundle, modes=modes, inference=args.backend, precision=args.precision,
                             mc_backend=getattr(args, "mc_backend", "auto"), threads=args.threads)
    except (BundleError, RuntimeError) as exc:
        print(f"isonode: {exc}", file=sys.stderr)
        return None


def _series_files(series_dir: Path) -> list[Path]:
    return sorted(p for p in Path(series_dir).rglob("*") if p.is_file())


def _print_choice(runtime, mode: str) -> None:  # noqa: ANN001 - Runtime
    choice = runtime.inference[mode]
    print(f"backend {choice.backend.name} (skipped: "
          + (", ".join(f"{k}: {v}" for k, v in choice.skipped.items()) or "none") + ")")
    if choice.precision is not None:
        print(f"precision {choice.precision.describe()}")
        for key, why in choice.precision.ineligible.items():
            print(f"not eligible {key}: {why}")


def _cmd_segment(args: argparse.Namespace) -> int:
    import time

    from appliance.inference.grid import grid_of
    from appliance.inference.nifti import label_names, write_label_nifti
    from appliance.pipeline import held_back, read_series, segment_volume
    from dicom_node.volume import VolumeError

    configure_logging(args.log_level)
    t0 = time.perf_counter()
    runtime = _runtime_for(args, (args.mode,))
    if runtime is None:
        return 1
    files = _series_files(args.series_dir)
    if not files:
        print(f"isonode: no files in {args.series_dir}", file=sys.stderr)
        return 1
    t1 = time.perf_counter()
    try:
        volume = read_series(files).volume
    except VolumeError as exc:
        print(f"isonode: cannot assemble the series: {exc.reason}", file=sys.stderr)
        return 1
    t_volume = time.perf_counter() - t1
    result = segment_volume(volume, runtime, args.mode)
    t2 = time.perf_counter()
    table = runtime.bundle.manifest.labels
    # held back (the default), an experimental class is body, as in the node's results
    labels = held_back(result.labels_on(grid_of(volume.array, volume.affine), volume.array), table, args.experimental)
    t_back = time.perf_counter() - t2
    t3 = time.perf_counter()
    out, jpath = write_label_nifti(labels, volume.affine, args.out, label_names(table, args.experimental))
    t_write = time.perf_counter() - t3
    stages = {"runtime start": runtime.start_s, "read+assemble": t_volume, **result.timings,
              "to CT grid": t_back, "write": t_write, "total": time.perf_counter() - t0}
    _print_choice(runtime, args.mode)
    for name, secs in stages.items():
        print(f"{name:14s} {secs:8.3f} s")
    held = [lab.name for lab in table if lab.experimental]
    if held:
        print(f"experimental classes {', '.join(held)}: "
              + ("included, marked in " + jpath.name if args.experimental else "held back as body (--experimental)"))
    print(f"wrote {out} {labels.shape[::-1]} and {jpath}")
    return 0


def _cmd_process(args: argparse.Namespace) -> int:
    """The node's whole pipeline on a series folder, without the network: the result objects go to --out."""
    import time

    from appliance.config import Route
    from appliance.pipeline import run_pipeline, write_results
    from appliance.worker import PERMANENT_ERRORS, output_plan

    configure_logging(args.log_level)
    config = load_config(args.config)
    overrides: dict = {}
    if args.no_seg:
        overrides["seg"] = False
    if args.mesh_files:
        kinds = [f.strip().lower() for f in args.mesh_files.split(",") if f.strip()]
        unknown = sorted(set(kinds) - {"stl", "ply"})
        if unknown:
            print(f"isonode: --mesh-files takes stl and/or ply, not {', '.join(unknown)}", file=sys.stderr)
            return 2
        overrides["mesh_files"] = kinds
    if overrides:
        config = config.model_copy(update={"output": config.output.model_copy(update=overrides)})
    t0 = time.perf_counter()
    runtime = _runtime_for(args, (args.mode,))
    if runtime is None:
        return 1
    files = _series_files(args.series_dir)
    if not files:
        print(f"isonode: no files in {args.series_dir}", file=sys.stderr)
        return 1
    route = Route(rule="command line", modes=(args.mode,), destinations=(), experimental_segments=args.experimental)
    try:
        output = run_pipeline(files, runtime, output_plan(config, args.mode, route))
    except PERMANENT_ERRORS as exc:
        print(f"isonode: cannot process the series: {exc}", file=sys.stderr)
        return 1
    t = time.perf_counter()
    paths = write_results(args.out, output.objects, fsync=False)
    output.timings["write_s"] = time.perf_counter() - t
    output.timings["total_s"] = time.perf_counter() - t0
    _print_choice(runtime, args.mode)
    print(f"marching cubes {runtime.mc_backend}; runtime start {runtime.start_s:.2f} s")
    for name, secs in output.timings.items():
        print(f"{name:28s} {secs:8.3f} s")
    for name, seg in output.segments.items():
        print(f"segment {name:12s} {seg['volume_ml']:10.1f} ml {seg['triangles']:8d} triangles")
    if not paths:
        print("no segment found: nothing written")
    for p in paths:
        print(f"wrote {p}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="isonode", description="isonode CT edge inference appliance")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the DICOM node and the processing workers (foreground)")
    _add_common(serve)
    serve.add_argument("--port", type=int, default=None, help="override node.port")
    serve.add_argument("--destination", action="append", default=[], metavar="AE@HOST:PORT",
                       help="add a destination for the results (repeatable); with no routing rule, results go "
                            "to every destination")
    serve.add_argument("--web-port", type=int, default=None, metavar="N",
                       help="serve the bedside page and its API on port N (override web.port; the token comes "
                            "from web.token_file or ISONODE_WEB_TOKEN)")
    serve.add_argument("--no-web", action="store_true", help="do not serve the bedside page")
    serve.set_defaults(func=_cmd_serve)

    audit = sub.add_parser("audit", help="the audit trail (PS3.15 A.5 / IHE ATNA events): associations, "
                           "instances received, queries, retrieves, results sent, logins")
    _add_common(audit)
    audit.add_argument("--json", action="store_true", help="a JSON list of events")
    audit.add_argument("--since", default=None, metavar="T", help="only events from T on (UNIX seconds or ISO 8601)")
    audit.set_defaults(func=_cmd_audit)

    feedback = sub.add_parser("feedback", help="physicians' feedback on results (from the bedside page)")
    feedback_sub = feedback.add_subparsers(dest="feedback_command", required=True)
    fb_list = feedback_sub.add_parser("list", help="every feedback item, oldest first")
    fb_export = feedback_sub.add_parser("export", help="write the feedback for the model toolchain "
                                        "(compiler.feedback.load_review_list reads it)")
    fb_export.add_argument("--out", type=Path, required=True)
    fb_list.add_argument("--json", action="store_true", help="a JSON list")
    for p in (fb_list, fb_export):
        _add_common(p)
        p.add_argument("--since", type=float, default=None, metavar="UNIX_TIME", help="only items from then on")
        p.set_defaults(func=_cmd_feedback)

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate a config file and name any wrong key")
    check.add_argument("file", type=Path)
    check.set_defaults(func=_cmd_config_check)

    status = sub.add_parser("status", help="what is stored, queued and failed")
    _add_common(status)
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.set_defaults(func=_cmd_status)

    series = sub.add_parser("series", help="series operations")
    series_sub = series.add_subparsers(dest="series_command", required=True)
    complete = series_sub.add_parser("complete", help="complete a receiving series now and queue its job")
    _add_common(complete)
    complete.add_argument("series_uid")
    complete.set_defaults(func=_cmd_series_complete)

    jobs = sub.add_parser("jobs", help="job queue")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    jobs_list = jobs_sub.add_parser("list", help="recent jobs")
    _add_common(jobs_list)
    jobs_list.add_argument("--state", choices=["queued", "running", "done", "failed"])
    jobs_list.add_argument("--limit", type=int, default=50)
    jobs_list.set_defaults(func=_cmd_jobs)
    jobs_retry = jobs_sub.add_parser("retry", help="queue a failed job again")
    _add_common(jobs_retry)
    jobs_retry.add_argument("job_id", type=int)
    jobs_retry.set_defaults(func=_cmd_jobs)

    seg = sub.add_parser(
        "segment", help="segment a DICOM series folder with the bundled model -> NIfTI",
        description="Segment a DICOM series folder with the bundled model: OUT.nii.gz, the label map on the "
                    "original CT grid (uint8), and OUT.labels.json, a JSON object mapping each label value "
                    "(a decimal string) to its class name, e.g. {\"1\": \"body\", \"2\": \"bone\"}. The classes the "
                    "bundle marks experimental are held back (their voxels are body) unless --experimental "
                    "is given; then they are listed with \" (experimental)\" after the name, e.g. "
                    "{\"8\": \"liver (experimental)\"}.")
    seg.add_argument("series_dir", type=Path)
    seg.add_argument("--mode", choices=["preview", "full"], default="preview")
    seg.add_argument("--out", type=Path, required=True, help="OUT.nii.gz (label map on the original CT grid)")
    seg.add_argument("--experimental", action="store_true",
                     help="also label the experimental classes (not validated; marked in OUT.labels.json)")
    _add_runtime_flags(seg)
    seg.set_defaults(func=_cmd_segment)

    proc = sub.add_parser("process", help="run the whole pipeline on a DICOM series folder -> Surface "
                                          "Segmentation and SEG objects in --out (no network)")
    proc.add_argument("series_dir", type=Path)
    proc.add_argument("--mode", choices=["preview", "full"], default="preview")
    proc.add_argument("--out", type=Path, required=True, help="folder for the .dcm objects (and STL/PLY)")
    proc.add_argument("--config", type=Path, default=None, help="YAML config for meshing and output settings")
    proc.add_argument("--experimental", action="store_true",
                      help="also describe the experimental classes (labelled experimental in every object); "
                           "without it they are held back as body")
    proc.add_argument("--no-seg", action="store_true", help="Surface Segmentation only, no DICOM SEG")
    proc.add_argument("--mesh-files", default="", metavar="stl,ply", help="also write STL and/or PLY per segment")
    proc.add_argument("--mc-backend", choices=["auto", "cpu", "cuda"], default="auto", help="marching cubes")
    _add_runtime_flags(proc)
    proc.set_defaults(func=_cmd_process)

    outbox = sub.add_parser("outbox", help="deliveries of results to the destinations")
    outbox_sub = outbox.add_subparsers(dest="outbox_command", required=True)
    outbox_list = outbox_sub.add_parser("list", help="recent deliveries")
    _add_common(outbox_list)
    outbox_list.add_argument("--state", choices=["pending", "done", "failed"])
    outbox_list.add_argument("--limit", type=int, default=50)
    outbox_list.set_defaults(func=_cmd_outbox)
    outbox_retry = outbox_sub.add_parser("retry", help="send a failed delivery again")
    _add_common(outbox_retry)
    outbox_retry.add_argument("delivery_id", type=int)
    outbox_retry.set_defaults(func=_cmd_outbox)
    return parser


def _add_runtime_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parent.parent / "models" / "ct_chest")
    p.add_argument("--backend", choices=["auto", "tensorrt", "ort-gpu", "openvino", "ort-cpu", "cpu"],
                   default="auto", help="inference backend: ort-cpu is ONNX Runtime on the CPU, openvino "
                   "OpenVINO, cpu the fastest CPU runtime that passed the bundle's accuracy check")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "int8"], default="auto",
                   help="auto: the fastest precision that passed the accuracy check on this CPU (timed once, "
                   "cached next to the bundle)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-level", default="WARNING")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
