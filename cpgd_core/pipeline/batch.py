"""``python -m cpgd_core batch INPUT... --out DIR``: stage-one deblurring of many videos with Ray.

The restoration is ``deblur``'s (``cli.py``: ``--mode quality`` by default, or ``fast``), per video or per segment.

``ray.init()`` starts an embedded cluster on this machine unless ``--address`` names one to join. Every video
is a Ray task (``--cpus-per-task``, ``--gpus-per-task``, fractions allowed); a long video is split into
segments (``segments.py``) restored by parallel tasks and joined by one more. Ray is imported only here and
only when there is work: the nodes and the rest of ``cpgd_core`` never need it.

Nothing is lost or half-written: every output is written under a temporary name and renamed when complete
(``VideoWriter``), and tagged (container comment) with the input's size and time and the options; a re-run
skips an output whose tag matches and whose frame count is right, and redoes the rest. A file that fails is
reported with its error while the others go on; tasks whose worker process dies are retried by Ray
(``--retries``). Ctrl-C cancels the running tasks and removes what they had started. A JSON report lists
every input with its status, frames, seconds, attempts and error.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

from ..errors import CPGDInputError
from ..fileio import write_text
from .cli import (add_restore_options, check_chunk, check_mode_options, fill_settings, frames_to_process, plan_sizes,
                  resolve_weights)
from .quality import resolve_mode

VIDEO_EXTS = {".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".wmv",
              ".flv", ".3gp", ".ogv"}
WORK_DIR = ".cpgd-batch"   # inside --out: segment parts while a batch runs; removed at the end
TAG = "cpgd-batch "        # prefix of the container comment that marks an output as finished by a batch
Event = Callable[[dict], None]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cpgd_core batch",
                                description="stage-one deblurring of many videos on Ray, resumable")
    p.add_argument("inputs", nargs="+", help="video files, folders (searched recursively) or glob patterns")
    p.add_argument("--out", required=True, help="output folder (sub-folders of folder inputs are kept)")
    add_restore_options(p)
    g = p.add_argument_group("Ray")
    g.add_argument("--address", default=None,
                   help="join a running cluster ('auto', 'ray://host:10001'); default: start one on this machine")
    g.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local cluster (default: all)")
    g.add_argument("--num-gpus", type=int, default=None, help="GPUs of the local cluster (default: all)")
    g.add_argument("--object-store-mb", type=int, default=None, help="object store of the local cluster")
    g.add_argument("--cpus-per-task", type=float, default=1.0, help="CPUs each video/segment task reserves")
    g.add_argument("--gpus-per-task", type=float, default=None,
                   help="GPUs each task reserves, fractions allowed (0.5: two tasks per GPU); default 1 when the "
                        "cluster has GPUs, else 0")
    g.add_argument("--segment-frames", type=int, default=600,
                   help="split videos longer than about 1.5x this into segments of about this many frames, "
                        "restored in parallel (0: never split)")
    g.add_argument("--retries", type=int, default=3, help="times a task is retried when its worker dies")
    p.add_argument("--report", default=None, help="JSON report (default: OUT/batch_report.json)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return p


def main(argv: list[str]) -> int:
    report = run_batch(build_parser().parse_args(argv))
    print(json.dumps({"event": "done", **report["summary"], "report": report["report"]}), flush=True)
    if report["summary"]["cancelled"]:
        return 130
    return 1 if report["summary"]["failed"] else 0


# -- inputs and outputs ------------------------------------------------------------------------------
def collect_inputs(inputs: list[str], out_dir: str) -> list[tuple[str, str]]:
    """(input file, output file) pairs. A folder contributes its videos (recursively, hidden folders and
    ``out_dir`` skipped) with their sub-folders kept; a file or glob match goes straight into ``out_dir``.
    Outputs are ``.mp4``. Raises for a missing input, an empty pattern, or two inputs with one output."""
    out_abs = os.path.abspath(out_dir)
    pairs: list[tuple[str, str]] = []
    for arg in inputs:
        if os.path.isdir(arg):
            found = []
            for root, dirs, files in os.walk(arg):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                                 and os.path.abspath(os.path.join(root, d)) != out_abs)
                found += [os.path.join(root, f) for f in sorted(files)
                          if os.path.splitext(f)[1].lower() in VIDEO_EXTS and not f.startswith(".")]
            if not found:
                raise CPGDInputError(f"no video files in folder {arg}")
            pairs += [(f, os.path.join(out_dir, os.path.splitext(os.path.relpath(f, arg))[0] + ".mp4")) for f in found]
        elif os.path.isfile(arg):
            pairs.append((arg, os.path.join(out_dir, os.path.splitext(os.path.basename(arg))[0] + ".mp4")))
        elif glob.has_magic(arg):
            found = sorted(f for f in glob.glob(arg, recursive=True) if os.path.isfile(f))
            if not found:
                raise CPGDInputError(f"no files match {arg}")
            pairs += [(f, os.path.join(out_dir, os.path.splitext(os.path.basename(f))[0] + ".mp4")) for f in found]
        else:
            raise CPGDInputError(f"input not found: {arg}")
    seen: dict[str, str] = {}
    unique = []
    for src, dst in pairs:
        key = os.path.abspath(dst)
        if os.path.abspath(src) == key:
            raise CPGDInputError(f"the output for {src} would replace it: choose another --out")
        if key in seen:
            if os.path.abspath(seen[key]) == os.path.abspath(src):
                continue  # named twice
            raise CPGDInputError(f"{seen[key]} and {src} would both be written to {dst}: process them separately")
        seen[key] = src
        unique.append((src, dst))
    return unique


def output_tag(src: str, total: int, options: dict) -> str:
    """The comment an output is tagged with: which input (name, size, modification time), options, frames."""
    st = os.stat(src)
    return TAG + json.dumps({"input": os.path.basename(src), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                             "frames": total, "options": options}, sort_keys=True)


def output_state(dst: str, tag: str, total: int) -> str:
    """'missing', 'finished' (tag matches and the container holds ``total`` frames), 'stale' (written by a batch
    but for another input or options, or damaged) or 'foreign' (a file that a batch did not write)."""
    import av

    from ..codec.decode import probe

    if not os.path.exists(dst):
        return "missing"
    try:
        with av.open(dst) as c:
            comment = c.metadata.get("comment", "")
    except (av.error.FFmpegError, OSError):
        return "foreign"
    if not comment.startswith(TAG):
        return "foreign"
    if comment != tag:
        return "stale"
    try:
        return "finished" if probe(dst).frame_count == total else "stale"
    except CPGDInputError:
        return "stale"


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def restore_options(args: argparse.Namespace, weights: str, mode: str = "fast") -> dict:
    """What decides an output's content (the tag compares these; device and segmenting change it only within
    floating-point rounding). Fast mode's keys are the ones batches wrote before there were modes, so its
    finished outputs stay finished; quality mode adds its own."""
    options = {"weights": _digest(weights), "raft": args.raft, "chunk": args.chunk, "overlap": args.overlap,
               "tile": args.tile, "tile_overlap": args.tile_overlap, "memory_budget": args.memory_budget,
               "max_frames": args.max_frames, "dtype": args.dtype, "crf": args.crf}
    if mode == "quality":
        from .nonblind import default_deblur_path

        options.update(mode="quality", solver=_digest(default_deblur_path()), iterations=args.iterations,
                       exposure=args.exposure)
    return options


@dataclass
class FileResult:
    input: str
    output: str
    status: str = "pending"       # done | skipped | failed | cancelled
    frames: int = 0
    seconds: float = 0.0
    segments: int = 0
    attempts: int = 0             # task starts (a retried task counts again)
    error: str = ""


@dataclass
class _Job:
    result: FileResult
    info: Any
    tag: str
    total: int
    plan: tuple = ()                              # (chunk, overlap, tile) of this video (cli.plan_sizes)
    segments: list = field(default_factory=list)
    parts_dir: str = ""
    pending: dict = field(default_factory=dict)   # ObjectRef -> task key
    started: float = 0.0
    args: Any = None                              # the options its tasks run with (the mode may be this video's own)


# -- the Ray tasks (plain functions, wrapped with ray.remote when a batch starts) --------------------
_MODELS: dict = {}


def _model(args: argparse.Namespace, device: str):
    """This worker's stage-one model for ``args.mode`` (kept for its next task)."""
    from ..weights import load_cpfp
    from .cli import load_quality

    key = (args.mode, args.iterations, device) if args.mode == "quality" else (args.mode, args.weights, device,
                                                                                args.raft)
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = (load_quality(args, device) if args.mode == "quality"
                        else load_cpfp(args.weights, device, raft=args.raft))
    return _MODELS[key]


def _task_setup(key: tuple, args: argparse.Namespace, tracker) -> tuple[Any, Callable[[int], None]]:
    import ray

    tracker.started.remote(key, os.getpid())
    device = args.device or ("cuda" if ray.get_gpu_ids() else "cpu")
    return _model(args, device), (lambda done: tracker.progress.remote(key, done))


def _whole_task(key: tuple, info, dst: str, tag: str, plan: tuple, args: argparse.Namespace, tracker) -> int:
    from .cli import deblur_file

    model, progress = _task_setup(key, args, tracker)
    return deblur_file(model, info, dst, args, plan, progress, metadata={"comment": tag}, overwrite=True, exact=True)


def _segment_task(key: tuple, info, seg, parts_dir: str, plan: tuple, args: argparse.Namespace, tracker) -> int:
    from .cli import restored_blocks
    from .segments import write_segment

    model, progress = _task_setup(key, args, tracker)
    blocks = restored_blocks(model, info.path, args, plan, start=seg.start, cap=seg.stop - seg.start, progress=progress)
    return write_segment(blocks, seg, parts_dir, info.fps)


def _join_task(key: tuple, info, segs: list, parts_dir: str, dst: str, tag: str, args: argparse.Namespace,
               tracker) -> int:
    from .cli import output_audio
    from .segments import join_segments

    tracker.started.remote(key, os.getpid())
    return join_segments(segs, parts_dir, dst, info.fps, output_audio(info, args.max_frames), args.crf,
                         metadata={"comment": tag})


class _Tracker:
    """Ray actor: tasks report their worker PID when they start and their frames as they go."""

    def __init__(self) -> None:
        self.frames: dict = {}
        self.events: list = []

    def started(self, key: tuple, pid: int) -> None:
        self.frames[key] = 0
        self.events.append({"event": "started", "file": key[0], "task": key[1], "pid": pid})

    def progress(self, key: tuple, done: int) -> None:
        self.frames[key] = done
        self.events.append({"event": "progress", "file": key[0], "task": key[1], "frames": done})

    def poll(self) -> tuple[dict, list]:
        events, self.events = self.events, []
        return dict(self.frames), events


# -- Ray ---------------------------------------------------------------------------------------------
def start_ray(address: Optional[str] = None, num_cpus: Optional[int] = None, num_gpus: Optional[int] = None,
              object_store_mb: Optional[int] = None) -> bool:
    """Connect to Ray (start a local cluster unless ``address``); returns False when already connected.
    Workers import ``cpgd_core`` from where this process does (the same path on every node of a cluster,
    e.g. a shared file system, or the pack installed there)."""
    import logging

    try:
        import ray
    except ImportError as e:
        raise CPGDInputError(f"the batch command needs Ray, which is not installed for {sys.executable}; install it "
                             f"with: {sys.executable} -m pip install ray==2.60.0 (or the pack's 'batch' extra)") from e
    if ray.is_initialized():
        return False
    if address and address.startswith("ray://"):
        try:
            import grpc  # noqa: F401 -- Ray Client's transport
        except ImportError as e:
            raise CPGDInputError(f"joining a cluster by ray:// needs Ray Client: {sys.executable} -m pip install "
                                 "'ray[client]==2.60.0' (or run on the head node with --address auto)") from e
    pack_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.pathsep.join(p for p in (pack_root, os.environ.get("PYTHONPATH", "")) if p)
    kwargs: dict = {"runtime_env": {"env_vars": {"PYTHONPATH": path}}, "log_to_driver": False,
                    "logging_level": logging.WARNING, "configure_logging": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        store = object_store_mb * 1024 * 1024 if object_store_mb else None
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, object_store_memory=store, include_dashboard=False, **kwargs)
    return True


class _Bar:
    """One status line on stderr: videos, frames, frames/s and ETA (redrawn in place on a terminal,
    a line every 10 s otherwise)."""

    def __init__(self, files: int, frames: int, enabled: bool) -> None:
        self.files, self.frames, self.enabled = files, frames, enabled
        self.t0 = time.time()
        self.last = 0.0
        self.tty = sys.stderr.isatty()

    def draw(self, finished: int, failed: int, done: int, final: bool = False) -> None:
        now = time.time()
        if not self.enabled or (not final and now - self.last < (0.2 if self.tty else 10)):
            return
        self.last = now
        rate = done / max(now - self.t0, 1e-9)
        left = (self.frames - done) / rate if rate > 0 else float("inf")
        eta = "--:--" if left == float("inf") else f"{int(left // 60):02d}:{int(left % 60):02d}"
        frac = done / self.frames if self.frames else 1.0
        bar = "#" * int(24 * frac) + "." * (24 - int(24 * frac))
        line = (f"videos {finished}/{self.files}{f' ({failed} failed)' if failed else ''} "
                f"[{bar}] frames {done}/{self.frames} {rate:.2f} f/s ETA {eta}")
        print(("\r" + line + " " * 4) if self.tty else line, end="\n" if final or not self.tty else "",
              file=sys.stderr, flush=True)


def _error_text(exc: BaseException) -> str:
    import ray

    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause
        if isinstance(cause, CPGDInputError):
            return str(cause)
        if cause is not None:
            return f"{type(cause).__name__}: {cause}"
    if isinstance(exc, ray.exceptions.WorkerCrashedError):
        return "the worker process died on every attempt (--retries)"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _clean(job: _Job) -> None:
    from ..fileio import temporary_path

    tmp = temporary_path(job.result.output)
    if os.path.exists(tmp):
        os.remove(tmp)
    if job.parts_dir and os.path.isdir(job.parts_dir):
        shutil.rmtree(job.parts_dir, ignore_errors=True)


# -- the batch ---------------------------------------------------------------------------------------
def _planner(args: argparse.Namespace):
    """The model loaded here on the CPU (only to fill the chunk/tile defaults and plan sizes per video, as
    ``deblur`` does) and the device the plan is made for: ``--device``, else the CPU (a conservative plan for
    GPU workers: the host budget then bounds the activations too). In quality mode the plan only sets the grid
    segments are cut on, and serves a one-frame video's fast-mode fallback."""
    import torch

    from ..weights import load_cpfp
    from ..models.official_stage_one import OfficialStageOne

    device = torch.device(args.device or "cpu")
    if device.type == "cuda" and not torch.cuda.is_available() and args.memory_budget != 0:
        raise CPGDInputError(f"--device {args.device}: this machine has no CUDA to plan the memory budget on; "
                             f"pass --memory-budget 0 (use --chunk and --tile as given)")
    model = load_cpfp(args.weights, "cpu", raft=args.raft)
    fill_settings(args, isinstance(model, OfficialStageOne))
    return model, device


def run_batch(args: argparse.Namespace, on_event: Optional[Event] = None) -> dict:
    """Run a batch (``build_parser`` options); returns the report (also written to ``--report``).
    ``on_event`` receives the tasks' ``started`` (with the worker ``pid``) and ``progress`` events."""
    from ..codec.decode import probe
    from .segments import plan_segments

    t0 = time.time()
    pairs = collect_inputs(args.inputs, args.out)
    check_chunk(args)
    check_mode_options(args)
    args.weights = os.path.abspath(resolve_weights(args.weights))
    planner, device = _planner(args)
    options = restore_options(args, args.weights, args.mode)
    results: list[FileResult] = []
    jobs: list[_Job] = []
    work_root = os.path.abspath(os.path.join(args.out, WORK_DIR))
    if os.path.isdir(work_root):  # left by a batch that was killed outright; one batch per --out at a time
        shutil.rmtree(work_root, ignore_errors=True)
    for src, dst in pairs:
        res = FileResult(os.path.abspath(src), os.path.abspath(dst))  # absolute: workers may run elsewhere
        results.append(res)
        try:
            info = probe(res.input)
            total = frames_to_process(info.frame_count, args.max_frames)
            if total == 0:
                raise CPGDInputError(f"no frames in {src}")
            plan = tuple(plan_sizes(args, planner, info.height, info.width, device))
            # a one-frame video runs fast mode (quality.resolve_mode): its tag and tasks say so
            mode, _ = resolve_mode(args.mode, total)
            job_args = args if mode == args.mode else argparse.Namespace(**{**vars(args), "mode": mode})
            tag = output_tag(res.input, total, {**(options if mode == args.mode else restore_options(
                job_args, args.weights, mode)), "plan": list(plan)})
            state = output_state(res.output, tag, total)
            if state == "finished":
                res.status, res.frames = "skipped", total
                continue
            if state == "foreign" and not args.overwrite:
                raise CPGDInputError(f"output {dst} exists and was not written by a batch (pass --overwrite to "
                                     f"replace it)")
        except (CPGDInputError, OSError) as e:
            res.status, res.error = "failed", str(e)
            continue
        # segments follow the chunk windows this video is actually restored with (the plan, not --chunk)
        # (quality mode restores each frame on its own, from context decoded around the segment: no shared frames)
        segs = plan_segments(total, plan[0], plan[1] if mode == "fast" else 0, args.segment_frames,
                             [k for k, _ in info.keyframes], splittable=info.exports_mvs)
        parts = os.path.join(work_root, f"{len(jobs):05d}-{os.path.basename(dst)}") if len(segs) > 1 else ""
        jobs.append(_Job(res, info, tag, total, plan, segs, parts, args=job_args))
        res.segments = len(segs)
    report_path = args.report or os.path.join(args.out, "batch_report.json")
    if not args.no_progress:
        print(f"{len(results)} inputs: {len(jobs)} to process, "
              f"{sum(r.status == 'skipped' for r in results)} finished earlier (skipped), "
              f"{sum(r.status == 'failed' for r in results)} failed", file=sys.stderr, flush=True)
    if jobs:
        _run_jobs(args, jobs, on_event)
    if os.path.isdir(work_root) and not os.listdir(work_root):
        os.rmdir(work_root)
    summary = {k: sum(r.status == k for r in results) for k in ("done", "skipped", "failed", "cancelled")}
    summary.update(files=len(results), frames=sum(r.frames for r in results if r.status == "done"),
                   seconds=round(time.time() - t0, 2))
    report = {"summary": summary, "options": options, "files": [asdict(r) for r in results],
              "report": os.path.abspath(report_path)}
    os.makedirs(os.path.dirname(os.path.abspath(report_path)), exist_ok=True)
    write_text(report_path, json.dumps(report, indent=1) + "\n")
    return report


def _finish(ref, owner: dict, jobs: list, submit, join, args: argparse.Namespace, tracker) -> None:
    """Book a finished task: a failure fails its file (its other tasks are cancelled); a video or join task
    finishes its file; the last segment of a file starts its join."""
    import ray

    job = owner.pop(ref)
    key = job.pending.pop(ref)
    try:
        value = ray.get(ref)
    except Exception as e:  # noqa: BLE001 -- every task failure becomes this file's error
        if job.result.status != "failed":
            job.result.status, job.result.error = "failed", _error_text(e)
        for other in list(job.pending):
            ray.cancel(other, force=True)
        value = None
    if job.result.status == "failed":
        if not job.pending:
            _clean(job)
        return
    if key[1] in ("video", "join"):
        job.result.status, job.result.frames = "done", int(value)
        job.result.seconds = round(time.time() - job.started, 2)
        _clean(job)
    elif not job.pending:
        jkey = (key[0], "join")
        submit(job, jkey, join.remote(jkey, job.info, job.segments, job.parts_dir, job.result.output, job.tag,
                                      args, tracker))


def _run_jobs(args: argparse.Namespace, jobs: list[_Job], on_event: Optional[Event]) -> None:
    started_here = start_ray(args.address, args.num_cpus, args.num_gpus, args.object_store_mb)  # names a missing Ray
    import ray

    try:
        gpus = args.gpus_per_task
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        res = {"num_cpus": args.cpus_per_task, "num_gpus": gpus, "max_retries": args.retries,
               "retry_exceptions": False}
        whole = ray.remote(_whole_task).options(**res)
        segment = ray.remote(_segment_task).options(**res)
        join = ray.remote(_join_task).options(num_cpus=min(args.cpus_per_task, 1.0), max_retries=args.retries,
                                              retry_exceptions=False)
        tracker = ray.remote(num_cpus=0)(_Tracker).remote()
        owner: dict = {}  # ObjectRef -> job

        def submit(job: _Job, key: tuple, ref) -> None:
            job.pending[ref] = key
            owner[ref] = job

        for n, job in enumerate(jobs):
            job.started = time.time()
            if len(job.segments) == 1:
                submit(job, (n, "video"), whole.remote((n, "video"), job.info, job.result.output, job.tag, job.plan,
                                                       job.args, tracker))
            else:
                for seg in job.segments:
                    key = (n, f"segment {seg.index}")
                    submit(job, key, segment.remote(key, job.info, seg, job.parts_dir, job.plan, job.args,
                                                          tracker))
        bar = _Bar(len(jobs), sum(j.total for j in jobs), not args.no_progress)
        try:
            while owner:
                ready, _ = ray.wait(list(owner), num_returns=1, timeout=0.2)
                for ref in ready:
                    _finish(ref, owner, jobs, submit, join, args, tracker)
                snapshot, events = ray.get(tracker.poll.remote())
                for ev in events:
                    if ev["event"] == "started":
                        jobs[ev["file"]].result.attempts += 1
                    if on_event is not None:
                        on_event({**ev, "input": jobs[ev["file"]].result.input})
                per_job: dict = {}
                for (n, task), frames in snapshot.items():
                    if task != "join":
                        per_job[n] = per_job.get(n, 0) + frames
                bar.draw(sum(j.result.status != "pending" for j in jobs),
                         sum(j.result.status == "failed" for j in jobs),
                         sum(min(v, jobs[n].total) for n, v in per_job.items()))
            bar.draw(len(jobs), sum(j.result.status == "failed" for j in jobs),
                     sum(j.result.frames for j in jobs), final=True)
        except KeyboardInterrupt:
            refs = list(owner)
            try:  # the cluster may be going down with the same Ctrl-C; the clean-up below runs regardless
                for ref in refs:
                    ray.cancel(ref, force=True)
                ray.wait(refs, num_returns=len(refs), timeout=30)
            except Exception:  # noqa: BLE001
                pass
            for job in jobs:
                if job.result.status == "pending":
                    # a task may have completed its output while the interrupt arrived: keep it if finished
                    if output_state(job.result.output, job.tag, job.total) == "finished":
                        job.result.status, job.result.frames = "done", job.total
                    else:
                        job.result.status, job.result.error = "cancelled", "interrupted (Ctrl-C)"
                _clean(job)
            print("\ninterrupted: running tasks cancelled, no partial outputs left", file=sys.stderr)
    finally:
        if started_here:
            ray.shutdown()
