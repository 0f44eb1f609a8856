"""Command line: argv -> Job -> the API (`pipeline.api`); prints, maps errors to exit statuses.

The exit statuses are `pipeline.errors.EXIT_STATUSES`.  Nothing here is unreachable from Python:
each command is one API call.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import time
import traceback
import warnings

from pipeline import __version__
from pipeline.errors import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_RUNNING,
                             EXIT_STATUSES, EXIT_USAGE, STATE_EXIT, ConfigError, PipelineError,
                             exit_status)
from pipeline.progress import progress_for


def entry() -> None:
    """The process entry point of ``kmeans-pipeline`` and ``python -m pipeline``: `main`,
    then `exit_process` with its status."""
    exit_process(main())


def exit_process(code: int) -> None:
    """End the process with ``code``, as a normal exit does but for the interpreter's teardown
    of every module (0.2-0.4 s once numba, rasterio and dask are loaded, on every run).

    What a normal exit runs first still runs, in its order: non-daemon threads are waited for
    (and thread pools' exit hooks), then the atexit handlers (distributed's, logging's), then
    both streams are flushed.  Only then does ``os._exit`` skip the teardown.  Every output was
    written before `main` returned, so nothing is cut short.  A flush to a reader that went
    away is quiet, as in `_reader_gone`.
    """
    import atexit
    import threading

    threading._shutdown()  # what Py_Finalize calls first: joins threads, runs their exit hooks
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    """``kmeans-pipeline``'s commands: argv in, an exit status out (`entry` ends the process)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = _parser().parse_args(argv)
    except BrokenPipeError:  # `--help | head -1`
        return _reader_gone(EXIT_OK, sys.stdout)
    except _UsageError as exc:  # argparse's own lines, and with --json the error object too
        exc.parser.print_usage(sys.stderr)
        return _failed(argparse.Namespace(quiet=0, json="--json" in argv[:_options_end(argv)]),
                       f"{exc.parser.prog}: {exc}", EXIT_USAGE)
    _setup_logging(args.verbose - args.quiet)
    try:
        return args.command(args)
    except BrokenPipeError:  # stderr's reader went away (`2>&1 | head`); stdout's is _out's
        return _reader_gone(EXIT_FAILED, sys.stdout, sys.stderr)
    except PipelineError as exc:
        return _failed(args, str(exc), exc.exit_code, exc.report)
    except KeyboardInterrupt:
        return _failed(args, "interrupted; rerun with output.if_exists: resume to finish the "
                             "job", EXIT_INTERRUPTED)
    except Exception:  # a bug: the one case that prints a traceback
        traceback.print_exc()
        return _failed(args, "unexpected internal error (a bug); please report it with the "
                             "traceback", EXIT_FAILED)


def _failed(args: argparse.Namespace, message: str, code: int,
            report: dict | None = None) -> int:
    """An error: the images a failed run skipped (issue 11), the error, and with ``--json``
    ``{"status": "error", "exit_code": N, "errors": [...], "problems": [...]}`` on stdout."""
    problems = []
    if report is not None:
        from pipeline.record import NOT_PROCESSED

        problems = [{"path": r["path"], "error": r["error"]} for r in report["images"]
                    if r["status"] == "skipped" and r["error"] not in (None, NOT_PROCESSED)]
    if not args.quiet:
        for entry in problems:
            print(f"skipped: {entry['path']}: {entry['error']}", file=sys.stderr)
    _print_error(message)
    if getattr(args, "json", False):
        _out(json.dumps({"status": "error", "exit_code": code, "errors": message.splitlines(),
                          "problems": problems}))
    return code


def _out(text: str) -> None:
    """Print ``text`` on stdout; a reader that has gone (``schema | head -1``) is no error:
    the command goes on and exits with its own status."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        _reader_gone(EXIT_OK, sys.stdout)


def _reader_gone(code: int, *streams) -> int:
    """After a broken pipe: later writes, and the interpreter's final flush, go nowhere
    instead of printing "Exception ignored ... BrokenPipeError" (Python's signal docs)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in streams:
        try:
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError, io.UnsupportedOperation):  # not a real file (a test's)
            pass
    os.close(devnull)
    return code


class _UsageError(Exception):
    """An argparse usage error (a bad option or argument), raised for `main` to report."""

    def __init__(self, message: str, parser: argparse.ArgumentParser) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    """argparse's parser (and, as their class, its subcommands') raising usage errors instead
    of exiting, so that ``--json`` gets its error object for them too."""

    def error(self, message: str):
        raise _UsageError(message, self)


def _options_end(argv: list[str]) -> int:
    """Where options end: ``--`` makes the words after it arguments, not ``--json``."""
    return argv.index("--") if "--" in argv else len(argv)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kmeans-pipeline", description="Segment image collections by colour with k-means.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(required=True, metavar="command")
    for name, func, text in (("run", _cmd_run, "run a job and write every output"),
                             ("validate", _cmd_validate,
                              "check a job and list its inputs; computes nothing"),
                             ("apply", _cmd_apply, "segment a job's images with the palette "
                              "of a saved model.json, without fitting"),
                             ("submit", _cmd_submit, "run a job on a dask cluster by itself; "
                                                     "prints its job id and returns")):
        sub = commands.add_parser(name, help=text, description=text, epilog=_epilog(name),
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.set_defaults(command=func)
        if name == "apply":
            sub.add_argument("model", help="a model.json written by an earlier run "
                                           "(kmeans.scope: collection)")
        if name == "run":
            sub.add_argument("job", nargs="+", metavar="JOB.yaml | INPUT",
                             help="the YAML job file; or, for a run without one, the images, "
                                  "folders, globs or URLs to segment (then -o is required)")
            sub.add_argument("-k", dest="k", metavar="K",
                             help="without a job file: kmeans.k (a number or auto; default 5)")
            sub.add_argument("-o", "--output", metavar="OUT",
                             help="without a job file: output.dir; the job run is written to "
                                  "OUT/job.yaml, so `run OUT/job.yaml` repeats it")
        else:  # more than one is refused in one line by _quick, not by argparse's usage
            sub.add_argument("job", nargs="+", metavar="JOB.yaml", help="the YAML job file")
        sub.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                         help="override a job-file key (repeatable); a relative path is "
                              "relative to the working directory (in the job file: to it)")
        sub.add_argument("--scheduler", help="threads | processes | synchronous | local | "
                                             "tcp://host:port (overrides dask.scheduler)")
        sub.add_argument("--scheduler-file", help="a dask scheduler file (overrides "
                                                  "dask.scheduler_file)")
        sub.add_argument("-q", "--quiet", action="count", default=0,
                         help="print only errors")
        sub.add_argument("-v", "--verbose", action="count", default=0,
                         help="log each phase and iteration (-vv: debug)")
        sub.add_argument("--json", action="store_true",
                         help="print the summary as one JSON object on stdout")
    commands.choices["submit"].add_argument(
        "--wait", action="store_true", help="follow the job with the progress bar until it ends")
    _add_folder_commands(commands)
    schema = commands.add_parser("schema", help="print a JSON Schema of the job file (for "
                                 "editors)", description="print a JSON Schema (draft 2020-12) "
                                 "of the job file, for editors to complete and check job files",
                                 epilog=_epilog("schema"),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    schema.set_defaults(command=_cmd_schema, verbose=0, quiet=0)
    return parser


_EXAMPLES = {
    "run": ["kmeans-pipeline run job.yaml --set kmeans.k=8",
            "kmeans-pipeline run photos/ more/*.png -k 8 -o out/   # no job file: writes "
            "out/job.yaml"],
    "validate": ["kmeans-pipeline validate job.yaml --json"],
    "apply": ["kmeans-pipeline apply out/model.json job2.yaml"],
    "submit": ["kmeans-pipeline submit job.yaml --scheduler tcp://10.0.0.5:8786"],
    "status": ["kmeans-pipeline status out/ || echo not done yet"],
    "cancel": ["kmeans-pipeline cancel out/ --timeout 30"],
    "schema": ["kmeans-pipeline schema > job.schema.json"],
}
# Which exit statuses each command can return (EXIT_STATUSES says what they mean).
_COMMAND_EXITS = {"run": (0, 3, 2, 1, 130), "validate": (0, 2, 1), "apply": (0, 3, 2, 1, 130),
                  "submit": (0, 3, 2, 1, 130), "status": (0, 4, 1, 130, 2),
                  "cancel": (0, 2, 1), "schema": (0, 1)}
# The statuses of run, apply and submit are the table's own meanings (errors.EXIT_STATUSES).


# What the table's statuses mean for the commands that run no job.  `status` exits with the
# job's state (errors.STATE_EXIT), not with how the command went.
_MEANINGS = {
    "status": {EXIT_OK: "the job is done", EXIT_FAILED: "the job failed",
               EXIT_INTERRUPTED: "the job was cancelled",
               EXIT_RUNNING: "the job is submitted or still running (or being cancelled)",
               EXIT_USAGE: "not the output folder of a job (no report.json or submission.json)"},
    "validate": {EXIT_OK: "the job is valid and every input can be opened",
                 EXIT_USAGE: "a bad job file or argument, or inputs that cannot be opened: one "
                             "line each",
                 EXIT_FAILED: "an unexpected error (a bug: with its traceback)"},
    "cancel": {EXIT_OK: "asked the job to stop (or it had finished already)",
               EXIT_USAGE: "no job was submitted to that folder, or its scheduler cannot be "
                           "reached",
               EXIT_FAILED: "an unexpected error (a bug: with its traceback)"},
    "schema": {EXIT_OK: "the JSON Schema is printed",
               EXIT_FAILED: "an unexpected error (a bug: with its traceback)"},
}


def _epilog(command: str) -> str:
    """``--help``'s example and exit statuses of one command."""
    example = "\n".join(f"  {line}" for line in _EXAMPLES[command])
    meanings = {**EXIT_STATUSES, **_MEANINGS.get(command, {})}
    statuses = "\n".join(f"  {code:>3}  {meanings[code].replace('`', '')}"
                         for code in _COMMAND_EXITS[command])
    return f"example:\n{example}\n\nexit statuses:\n{statuses}"


def _add_folder_commands(commands) -> None:
    for name, func, text in (("status", _cmd_status, "say how a job in an output folder is "
                                                     "doing: running, done, failed, cancelled"),
                             ("cancel", _cmd_cancel, "stop a submitted job; its completed "
                                                     "images stay valid for a resume")):
        sub = commands.add_parser(name, help=text, description=text, epilog=_epilog(name),
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.set_defaults(command=func, verbose=0, quiet=0)
        sub.add_argument("out", help="the job's output folder (output.dir)")
        sub.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                         help="a storage option for an output.dir URL (repeatable; the value "
                              "is YAML, a dotted key nests: client_kwargs.endpoint_url=URL); "
                              "credentials come from the environment as usual")
        sub.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    commands.choices["cancel"].add_argument(
        "--timeout", type=float, default=10.0,
        help="seconds to wait for the scheduler, then for the job to stop (default 10)")


# A job file is YAML; JSON is YAML too (scripts write job files with json.dump).
JOB_FILE_EXTENSIONS = (".yaml", ".yml", ".json")


def _quick(args: argparse.Namespace) -> bool:
    """Whether ``run`` was given inputs and -o instead of a job file (pngquant style); makes
    ``args.job`` the one job file otherwise."""
    files = [item for item in args.job if item.lower().endswith(JOB_FILE_EXTENSIONS)]
    if len(files) > 1:
        raise ConfigError(f"{len(files)} job files given ({', '.join(files)}); a command runs "
                          "one job: give each its own command")
    if args.command is not _cmd_run:
        if len(args.job) > 1:
            raise ConfigError(f"{' '.join(args.job)}: give one job file (.yaml, .yml or .json), not "
                              f"{len(args.job)} arguments")
        args.job = args.job[0]
        return False
    if files and len(args.job) > 1:
        raise ConfigError(f"{files[0]}: a job file given with inputs ({len(args.job) - 1} "
                          "more); give the job file alone (its input.paths lists the inputs), "
                          "or the inputs alone with -o OUT")
    job_file = bool(files)
    if job_file and (args.k is not None or args.output is not None):
        raise ConfigError("-k and -o are for a run without a job file; with one, use --set "
                          "kmeans.k=... and --set output.dir=...")
    if job_file:
        args.job = args.job[0]
        return False
    if args.output is None:
        raise ConfigError(f"{args.job[0]}: not a job file (.yaml, .yml or .json); to run without one, "
                          "give the output folder with -o OUT")
    return True


def _load_quick(args: argparse.Namespace):
    from pipeline.api import Job

    raw = {"input": {"paths": list(args.job)}, "output": {"dir": args.output}}
    if args.k is not None:
        raw["kmeans"] = {"k": args.k if args.k == "auto" else _int(args.k, "-k")}
    return Job.from_dict(raw, os.getcwd(), _set_arguments(args), "command line", args.scheduler)


def _int(text: str, option: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{option}: must be an integer or 'auto', got {text!r}") from None


def _write_quick_job(args: argparse.Namespace, cfg) -> str:
    """``OUT/job.yaml``: the job this run without a job file ran, paths relative to OUT."""
    from pipeline import config, storage
    from pipeline.sinks import images

    command = " ".join(["kmeans-pipeline", "run", *args.job]
                       + (["-k", args.k] if args.k is not None else []) + ["-o", args.output]
                       + [f"--set {item}" for item in args.set])
    path = storage.join(cfg.output.dir, "job.yaml")
    again = storage.join(args.output, "job.yaml")
    text = config.job_file_text(cfg, cfg.output.dir, f"written by: {command}\nrun it again "
                                                      f"with: kmeans-pipeline run {again}")
    images.atomic_write(path, lambda handle: handle.write(text.encode()), False,
                        cfg.output.storage_options)
    return path


def _write_quick_job_after(args: argparse.Namespace, cfg, finished: bool) -> None:
    """Also after a failed or interrupted run, so `run OUT/job.yaml` can resume it; then only
    where the run got as far as making the output folder."""
    try:
        _write_quick_job(args, cfg)
    except (OSError, PipelineError):
        if finished:
            raise


def _load(args: argparse.Namespace):
    from pipeline.api import Job

    if _quick(args):
        return _load_quick(args)
    return Job.from_yaml(args.job, _set_arguments(args), args.scheduler)


def _set_arguments(args: argparse.Namespace) -> list:
    """``--set`` (and ``--scheduler-file``) as overrides named so in messages; their relative
    paths are relative to the working directory, as every path typed on a command line."""
    from pipeline.config import overrides_of

    items = list(args.set)
    if args.scheduler_file:
        items.append(f"dask.scheduler_file={args.scheduler_file}")
    return overrides_of(items, "--set", os.getcwd())


def _cmd_schema(args: argparse.Namespace) -> int:
    from pipeline.config import json_schema

    _out(json.dumps(json_schema(), indent=2))
    return EXIT_OK


def _cmd_validate(args: argparse.Namespace) -> int:
    from pipeline import api

    summary = api.validate(_load(args))
    summary["job"] = args.job
    if args.json:
        _out(json.dumps({k: v for k, v in summary.items() if k != "output_dir"}))
    elif not args.quiet:
        for info in summary["images"]:
            _out(f"{info['path']} -> {info['name']} ({info['width']}x{info['height']} "
                  f"{info['format']})")
        for path in summary["ignored"]:
            _out(f"ignored (not an image type): {path}")
        _out(f"{len(summary['images'])} image(s), {summary['pixels'] / 1e6:.1f} Mpx; "
              f"output to {summary['output_dir']}")
    for problem in summary["problems"]:
        _print_error(problem)
    return EXIT_USAGE if summary["problems"] else EXIT_OK


def _cmd_apply(args: argparse.Namespace) -> int:
    """``apply MODEL.json job.yaml``: ``run`` with ``kmeans.init: MODEL.json, max_iter: 0``."""
    return _cmd_run(args)


def _cmd_run(args: argparse.Namespace) -> int:
    from pipeline import api

    job = _load(args)
    show = None if (args.quiet or args.json) else progress_for(sys.stderr, lines=True)
    started = time.perf_counter()
    connected = []

    def on_connect(connection) -> None:
        connected.append(connection)
        if connection.dashboard and show:
            print(f"dask dashboard: {connection.dashboard}", file=sys.stderr)

    finished = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if getattr(args, "model", None):
                report = api.apply(args.model, job, show, on_connect=on_connect)
            else:
                report = api.run(job, show, on_connect=on_connect)
        finished = True
    finally:
        if isinstance(args.job, list):  # run without a job file: say what it ran
            _write_quick_job_after(args, job.config, finished)
    totals = report["totals"]
    skipped = [{"path": r["path"], "error": r["error"]} for r in report["images"]
               if r["status"] != "ok" and r["error"]]
    return _summary(args, report["status"], exit_status(totals), totals, job.out_dir,
                    time.perf_counter() - started, connected[0].describe(), skipped)


def _summary(args: argparse.Namespace, status: str, code: int, totals: dict, out_dir: str,
             seconds: float, scheduler: dict, skipped: list[dict]) -> int:
    summary = {"status": status, "exit_code": code, "output_dir": out_dir,
               "images": totals["images"], "ok": totals["ok"], "skipped": totals["skipped"],
               "failed": totals["failed"], "pixels": totals["pixels"],
               "seconds": round(seconds, 3), "scheduler": scheduler["scheduler"],
               "scheduler_reason": scheduler["reason"], "dashboard": scheduler["dashboard"],
               "problems": skipped}
    if not args.quiet:
        for entry in skipped:
            print(f"skipped: {entry['path']}: {entry['error']}", file=sys.stderr)
    if args.json:
        _out(json.dumps(summary))
    elif not args.quiet:
        print(f"done: {totals['ok']} image(s) ok, {totals['skipped']} skipped, "
              f"{totals['failed']} failed; {totals['pixels'] / 1e6:.1f} Mpx in "
              f"{summary['seconds']:.1f} s -> {out_dir}", file=sys.stderr)
    return code


def _cmd_submit(args: argparse.Namespace) -> int:
    from pipeline import api

    job = _load(args)
    started = time.perf_counter()
    follow = None if (args.quiet or args.json) else progress_for(sys.stderr, lines=True)

    def on_submit(entry: dict) -> None:
        if args.wait and follow is not None:
            print(f"submitted job {entry['job_id']}; following it (Ctrl-C stops following, "
                  "not the job)", file=sys.stderr)

    entry = api.submit(job, wait=args.wait, progress=follow, on_submit=on_submit)
    out = job.out_dir
    if not args.wait:
        if args.json:
            _out(json.dumps(entry))
        else:
            _out(entry["job_id"])
            if not args.quiet:
                print(f"submitted job {entry['job_id']} to {entry['scheduler']}; see "
                      f"`kmeans-pipeline status {out}`, stop it with `kmeans-pipeline "
                      f"cancel {out}`", file=sys.stderr)
        return EXIT_OK
    result = entry["result"]
    if result["error"]:
        _print_error(result["error"])
        return result["exit_code"]
    scheduler = {"scheduler": entry["scheduler"], "reason": "the job was submitted to it",
                 "dashboard": entry.get("dashboard")}
    return _summary(args, result["status"], result["exit_code"], result["totals"], out,
                    time.perf_counter() - started, scheduler, result["problems"])


def _cmd_status(args: argparse.Namespace) -> int:
    from pipeline import api

    state = api.status(args.out, _storage_options(args.storage_option))
    if args.json:
        _out(json.dumps(state))
    else:
        _out(_describe(state))
    return STATE_EXIT.get(state["state"], EXIT_FAILED)


def _cmd_cancel(args: argparse.Namespace) -> int:
    from pipeline import api

    state = api.cancel(args.out, args.timeout, _storage_options(args.storage_option))
    if args.json:
        _out(json.dumps(state))
        return EXIT_OK
    _out(_describe(state))
    if not state["requested"] or state["state"] in ("done", "failed"):
        print("nothing to cancel: the job had already finished", file=sys.stderr)
    elif state["state"] == "cancelled":
        print("completed images stay valid: submit the job again with output.if_exists: "
              "resume to finish it", file=sys.stderr)
    else:
        print(f"the job has not stopped yet; see `kmeans-pipeline status {args.out}`",
              file=sys.stderr)
    return EXIT_OK


def _storage_options(items: list[str]) -> dict | None:
    """``--storage-option KEY=VALUE`` arguments as storage options (issue 11: `status` and
    `cancel` could not reach an output that needs them).  Values are YAML scalars or flow
    mappings; ``a.b=v`` gives ``{"a": {"b": v}}``."""
    import yaml

    options: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--storage-option {item!r}: expected KEY=VALUE, e.g. "
                              "client_kwargs.endpoint_url=http://127.0.0.1:9000")
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--storage-option {key}: the value is not valid YAML "
                              f"({str(exc).splitlines()[0]})") from None
        *parents, leaf = key.strip().split(".")
        where = options
        for part in parents:
            where = where.setdefault(part, {})
            if not isinstance(where, dict):
                raise ConfigError(f"--storage-option {key}: {part} is already given a value")
        where[leaf] = value
    return options or None


def _describe(state: dict) -> str:
    text = f"{state['state']}: job {state['job_id'] or '(run)'}"
    if state["images"] is not None:
        text += (f", {state['ok']} of {state['images']} images ok ({state['skipped']} skipped, "
                 f"{state['failed']} failed)")
    if state["state"] in ("running", "cancelling") and state["phase"]:
        text += f", {state['phase']} {state['phase_done']}/{state['phase_total']}"
    if state["updated"]:
        text += f"; updated {state['updated']}"
    if state["error"]:
        text += f"; {state['error']}"
    return text


def _setup_logging(level: int) -> None:
    ours = {2: logging.DEBUG, 1: logging.INFO, 0: logging.WARNING}.get(level, logging.ERROR)
    root = logging.getLogger()
    console = next((h for h in root.handlers if getattr(h, "kmeans_pipeline", False)), None)
    if console is None and not root.handlers:  # as logging.basicConfig, but ours to re-level
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter("%(levelname)s: %(name)s: %(message)s"))
        console.kmeans_pipeline = True
        root.addHandler(console)
    # -q quiets the console, not the loggers: warnings still reach report.json (tasklog).
    if console is not None:
        console.setLevel(ours if level <= 2 else logging.DEBUG)
    logging.getLogger("pipeline").setLevel(min(ours, logging.WARNING) if level <= 2
                                           else logging.DEBUG)
    # A lost scheduler or worker is reported by us in one line; -v shows dask's own errors.
    noisy = logging.CRITICAL if level < 1 else logging.ERROR if level < 2 else logging.INFO
    names = ("distributed", "distributed.client", "distributed.gc", "bokeh", "tornado")
    for name in names:
        logging.getLogger(name).setLevel(noisy)
    import dask  # distributed sets its loggers' levels from this when it is first imported

    dask.config.set({"logging": {name: logging.getLevelName(noisy).lower() for name in names}})
    # A cut connection leaves aiohttp (fsspec's S3 and HTTP backends) logging "Task exception
    # was never retrieved" with a traceback; pipeline.storage reports the failure itself.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL if level < 2 else logging.DEBUG)
    os.environ.setdefault("PYTHONWARNINGS", "ignore")


def _print_error(message: str) -> None:
    for line in message.splitlines():
        print(line if line.startswith("  ") else f"error: {line}", file=sys.stderr)
