"""dermserve benchmark harness: the limit, dermserve, a naive FastAPI server and MLServer, side by side.

``python -m benchmarks --help``. One invocation measures every system on the same images and model,
alternating systems at each concurrency level so that drift (thermal, noisy neighbours, the ±15 %
run-to-run spread of a 2-core box) hits all of them alike. Only ratios from one run are meaningful.

Systems:

- ``limit``: dermserve's own decode + preprocess (``service.preprocessing``) and
  ``service.runtime.ModelRuntime.predict`` in this process, no HTTP, at the best batch size /
  thread setting found by a short grid search; decode of the next batch overlaps inference.
- ``limit@NAME``: the same for another model directory (``--limit-model NAME=MODEL_DIR|git:REV``, e.g.
  model 1.1.0 next to the bundled model), the same grid, interleaved with ``limit``.
- ``dermserve``: ``python -m service`` at its default settings (multipart ``POST /predict``).
- ``naive``: :mod:`benchmarks.naive_server` (one onnxruntime call per request, no batching).
- ``mlserver``: Seldon MLServer 1.7 with adaptive batching and :mod:`benchmarks.mlserver_runtime`
  (Open Inference Protocol JSON, base64 BYTES input), in its own virtualenv ``.bench-venvs/mlserver``.
- ``dermserve[NAME]``: dermserve with extra ``DERMSERVE_*`` settings (``--variant``), to measure levers.
- ``dermserve@NAME``: dermserve from another checkout of this repository (``--checkout``), e.g. the
  commit before a change, at default settings, serving the run's ``--model-dir``
  (``--checkout-model same``, the default) or the checkout's own ``models/default`` (``own``).

Which model each system serves: ``--model-dir`` (default: this tree's ``models/default``) for
``limit``, ``dermserve``, ``naive``, ``mlserver`` and ``dermserve@NAME`` with ``--checkout-model same``;
a variant's ``model_dir=`` if it sets one; ``<checkout>/models/default`` for ``dermserve@NAME`` with
``--checkout-model own``; the ``--limit-model`` directory for ``limit@NAME``. Each server's answers are
checked against the in-process runtime of the model it serves; ``results.json`` records each system's
model (``servers.*.model``, ``limit_models.*.model``).

The load generator is ``wrk`` (compiled; a Python client would take CPU from the server on 2 cores)
with ``benchmarks/wrk/bodies.lua``, posting pre-built bodies of real test-split JPEGs. httpx is used
only to check each server's answers against the in-process runtime before measuring.

CPU accounting (every point): cores used by the server's process tree (/proc utime + stime) and by
wrk (rusage), CPU ms per image / per request, and for dermserve the mean images per model call and
the ms per image inside model calls (its /metrics counters) -- the server-side split between model
compute and everything else, and the evidence for where a 2-core ceiling comes from. The limit
records its own CPU ms per image (process CPU time).
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import typer

from benchmarks import BENCH_DIR, CACHE_DIR, REPO_ROOT
from benchmarks.bodies import build_bodies, clinical_images, load_test_images
from benchmarks.limit import Limit, LimitConfig, sample_limit
from benchmarks.models import BadSpec, model_info, parse_checkouts, parse_limit_models, resolve_model_dir
from benchmarks.report import compute_ratios, evaluate_targets, fmt, machine, plot, print_table, versions
from benchmarks.servers import Server, check_answers, make_servers
from benchmarks.wrk import Point, measure_http

app = typer.Typer(add_completion=False, help=__doc__, no_args_is_help=False)

SYSTEMS = ("limit", "dermserve", "naive", "mlserver")


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def parse_variants(variant: list[str]) -> dict[str, dict[str, str]]:
    """``NAME:KEY=VAL[,KEY=VAL]`` -> ``{NAME: {DERMSERVE_KEY: VAL}}`` (the ``DERMSERVE_`` prefix is optional)."""
    variants: dict[str, dict[str, str]] = {}
    for v in variant:
        name, _, kvs = v.partition(":")
        env = {}
        for kv in filter(None, kvs.split(",")):
            k, _, val = kv.partition("=")
            k = k.strip().upper()
            env[k if k.startswith("DERMSERVE_") else f"DERMSERVE_{k}"] = val.strip()
        variants[name] = env
    return variants


def model_options(variant: list[str], checkout: list[str], checkout_model: str, limit_model: list[str],
                  model_dir: Path) -> tuple[dict[str, dict[str, str]], dict[str, Path], dict[str, Path]]:
    """The options that name trees and models, checked before anything is measured: ``(variants,
    checkouts, {"limit@NAME": model dir})``. Notes on stderr when a ``--checkout-model same`` checkout
    bundles another model than the one it will serve.

    Raises:
        typer.BadParameter: a malformed value, a missing model directory / checkout, an unknown mode.
    """
    from benchmarks.models import checkout_model_dir

    if checkout_model not in ("same", "own"):
        raise typer.BadParameter(f"--checkout-model {checkout_model!r}: expected same or own")
    try:
        variants = resolve_variant_models(parse_variants(variant))
        checkouts = parse_checkouts(checkout)
        served = {name: checkout_model_dir(p, checkout_model, model_dir) for name, p in checkouts.items()}
        limit_model_dirs = parse_limit_models(limit_model)
    except BadSpec as exc:
        raise typer.BadParameter(str(exc)) from None
    for name, p in checkouts.items():
        own = p / "models" / "default" / "manifest.json"
        if served[name] == model_dir and own.is_file():
            own_m, run_m = json.loads(own.read_text()), json.loads((model_dir / "manifest.json").read_text())
            if own_m.get("sha256") != run_m.get("sha256"):
                typer.echo(f"note: dermserve@{name} serves --model-dir {model_dir} ({run_m.get('version')}), not "
                           f"its own models/default ({own_m.get('version')}); --checkout-model own serves that",
                           err=True)
    return variants, checkouts, limit_model_dirs


def resolve_variant_models(variants: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """Each variant's ``DERMSERVE_MODEL_DIR`` (``model_dir=``) made absolute (a relative one is taken from the
    current directory; ``git:REV[:PATH]`` is extracted, see :func:`benchmarks.models.resolve_model_dir`)."""
    return {name: env | ({"DERMSERVE_MODEL_DIR": str(resolve_model_dir(env["DERMSERVE_MODEL_DIR"]))}
                         if "DERMSERVE_MODEL_DIR" in env else {})
            for name, env in variants.items()}


def start_and_check(servers: list[Server], images: list[tuple[str, bytes]], ref_runtime) -> None:
    """Start the servers one at a time (cold start measured with nothing else running) and check each one's
    answers against the in-process runtime of the model it serves (``ref_runtime`` for ``--model-dir``)."""
    from service.runtime import ModelRuntime

    refs = {Path(ref_runtime.model_dir).resolve(): ref_runtime}
    for s in servers:
        md = Path(s.model_dir or ref_runtime.model_dir).resolve()
        if md not in refs:
            refs[md] = ModelRuntime(md, ["CPUExecutionProvider"], intra_op_threads=1)
        m = refs[md].manifest
        typer.echo(f"starting {s.name} (code {s.cwd}, model {md}: {m.name} {m.version}) ...", err=True)
        s.start()
        diff = check_answers(s, images, refs[md], refs[md].class_codes)
        typer.echo(f"  ready in {s.cold_start_s:.2f} s, RSS {s.rss_rest_mb:.0f} MB, answers match "
                   f"(max |dp| {diff:.1e})", err=True)


def grid_configs(threads: str, batches: str) -> list[LimitConfig]:
    """The limit's grid: batch size x (intra-op, decode) threads x spinning (only with an intra-op pool)."""
    cfgs = []
    for pair in threads.split(","):
        intra, dec = (int(x) for x in pair.split(":"))
        for spin in ((True, False) if intra > 1 else (True,)):
            cfgs += [LimitConfig(b, intra, dec, spin) for b in _ints(batches)]
    return cfgs


def rotated(items: list, i: int) -> list:
    """``items`` starting at position ``i`` (mod len): a different system goes first at every step."""
    k = i % len(items) if items else 0
    return items[k:] + items[:k]


def limit_grid(lims: list[Limit], imgs: list[tuple[str, bytes]], sc: str, threads: str, batches: str,
               seconds: float) -> dict[str, tuple[LimitConfig, list[dict]]]:
    """Every limit (one per model) over the same grid, interleaved: each config is measured for every model
    (rotating the order) before the next one. ``{limit name: (its best config, its grid)}``."""
    grids: dict[str, list[dict]] = {lim.name: [] for lim in lims}
    for i, cfg in enumerate(grid_configs(threads, batches)):
        for lim in rotated(lims, i):
            ips = lim.measure(imgs, cfg, max(0.3, seconds / 2))
            grids[lim.name].append({**asdict(cfg), "images_per_s": ips})
            typer.echo(f"[{sc}] {lim.name} {cfg}: {ips:.1f} images/s", err=True)
    out = {}
    for name, grid in grids.items():
        best = max(grid, key=lambda r: r["images_per_s"])
        out[name] = (LimitConfig(best["batch"], best["intra_op_threads"], best["decode_threads"],
                                 best["ort_spinning"]), grid)
    return out


def sweep(servers: list[Server], sc: str, bodies: dict, levels: list[int], per_request: int, duration: float,
          warmup: float, after_level=None) -> list[Point]:
    """Every server at every concurrency level, rotating the order per level (drift hits all alike)."""
    points = []
    for i, c in enumerate(levels):
        for s in rotated(servers, i):
            p = measure_http(s, sc, bodies[(s.body_format, per_request)], per_request, c, duration, warmup)
            points.append(p)
            label = f"{s.name:<20}" if per_request == 1 else f"x{per_request} {s.name:<17}"
            typer.echo(f"[{sc}] c={c:<3} {label} {p.images_per_s:7.1f} img/s  p50 {fmt(p.p50_ms, '.2f')}"
                       f"  p99 {fmt(p.p99_ms, '.2f')} ms  errors {p.errors}", err=True)
        if after_level:
            after_level()
    return points


def half_load(servers: list[Server], sc: str, bodies: dict, points: list[Point], duration: float,
              warmup: float) -> list[Point]:
    """Each server paced at about half its own saturated request rate over 8 connections."""
    out, conns = [], 8
    for s in servers:
        sp = [p for p in points if p.scenario == sc and p.system == s.name and p.per_request == 1]
        sat_rps = max(p.requests_per_s for p in sp)
        c1 = min(sp, key=lambda p: p.concurrency)
        target = sat_rps / 2
        delay = max(0.0, conns * 1000.0 / target - (c1.p50_ms or 0.0))
        p = measure_http(s, sc, bodies[(s.body_format, 1)], 1, conns, duration, warmup, delay_ms=delay)
        p.extra |= {"target_requests_per_s": target, "saturated_requests_per_s": sat_rps}
        out.append(p)
        typer.echo(f"[{sc}] half load {s.name:<20} {p.requests_per_s:7.1f} req/s (target {target:.0f})"
                   f"  p99 {fmt(p.p99_ms, '.2f')} ms", err=True)
    return out


def limit_models_entry(limits: dict[str, dict], limit_model_dirs: dict[str, Path]) -> dict:
    """``results.json``'s ``limit_models``: ``{"limit@NAME": {"model": model_info, "scenarios": {sc: entry}}}``."""
    return {name: {"model": model_info(d), "scenarios": limits.get(name, {})} for name, d in limit_model_dirs.items()}


def write_results(out_dir: Path, started: datetime, model_dir: Path, settings: dict, servers: list[Server],
                  limits: dict[str, dict], limit_model_dirs: dict[str, Path], points: list[Point]) -> None:
    """results.json, report.txt (the printed table) and results.png in ``out_dir``. ``limits``:
    ``{"limit" | "limit@NAME": {scenario: entry}}``; ``limit_model_dirs``: the ``limit@NAME`` models."""
    server_info = {s.name: {"cold_start_s": s.cold_start_s, "rss_rest_mb": s.rss_rest_mb,
                            "rss_load_mb": s.rss_load_mb, "code_dir": str(s.cwd) if s.kind == "dermserve" else None,
                            "model": model_info(s.model_dir or model_dir)} for s in servers}
    limit = limits.get("limit", {})
    extra = limit_models_entry(limits, limit_model_dirs)
    ratios = compute_ratios(points, limit, extra)
    targets = evaluate_targets(ratios, points, server_info)
    argv = " ".join(["python -m benchmarks", *sys.argv[1:]])
    result = {
        "command": argv,
        "date": started.isoformat(timespec="seconds"),
        "elapsed_s": (datetime.now(timezone.utc) - started).total_seconds(),
        "machine": machine(),
        "versions": versions(),
        "model": model_info(model_dir),
        "settings": settings,
        "servers": server_info,
        "limit": limit,
        "limit_models": extra,
        "points": [asdict(p) for p in points],
        "ratios": ratios,
        "targets": targets,
    }
    (out_dir / "results.json").write_text(json.dumps(result, indent=2))
    text = print_table(points, limit, server_info, ratios, targets, extra, result["model"])
    (out_dir / "report.txt").write_text(f"{argv}\n{started.isoformat(timespec='seconds')}  {machine()}\n"
                                        f"{result['versions']}\n{text}\n")
    plot(points, limit, out_dir / "results.png", extra)
    typer.echo(f"wrote {out_dir / 'results.json'}, {out_dir / 'results.png'}, {out_dir / 'report.txt'}", err=True)


@dataclass(frozen=True)
class Plan:
    """What one run measures per scenario (see the CLI options)."""

    levels: list[int]
    multi_levels: list[int]
    multi_images: int
    duration: float
    warmup: float
    half_load: bool
    limit_threads: str
    limit_batches: str
    limit_seconds: float


def run_scenario(plan: Plan, servers: list[Server], lims: list[Limit], sc: str, imgs: list[tuple[str, bytes]],
                 work: Path, limits: dict[str, dict]) -> list[Point]:
    """One scenario: the limits' grid, the single-image sweep (every limit re-measured after each level, in
    rotating order), the multi-image sweep and the half-load points; each limit's entry goes into
    ``limits[name][sc]``."""
    bodies = {}
    for fmt_ in {s.body_format for s in servers}:
        for per_request in {1, *([plan.multi_images] if plan.multi_levels else [])}:
            bodies[(fmt_, per_request)] = build_bodies(imgs, per_request, fmt_, work / sc / f"{fmt_}-{per_request}")
    best: dict[str, LimitConfig] = {}
    if lims:
        grids = limit_grid(lims, imgs, sc, plan.limit_threads, plan.limit_batches, plan.limit_seconds)
        for name, (cfg, grid) in grids.items():
            best[name] = cfg
            limits.setdefault(name, {})[sc] = {"config": asdict(cfg), "grid": grid, "samples": []}
    rounds = [0]

    def resample() -> None:
        for lim in rotated(lims, rounds[0]):
            sample_limit(limits[lim.name][sc], lim, imgs, best[lim.name], plan.limit_seconds)
        rounds[0] += 1

    points = sweep(servers, sc, bodies, plan.levels, 1, plan.duration, plan.warmup, after_level=resample)
    if not plan.levels:
        resample()
    points += sweep(servers, sc, bodies, plan.multi_levels, plan.multi_images, plan.duration, plan.warmup)
    if plan.half_load and plan.levels:
        points += half_load(servers, sc, bodies, points, plan.duration, plan.warmup)
    for name in best:
        limits[name][sc]["images_per_s"] = statistics.median(limits[name][sc]["samples"])
    return points


@app.command()
def main(
    systems: Annotated[str, typer.Option(help="comma list of: limit, dermserve, naive, mlserver")] =
        "limit,dermserve,naive,mlserver",
    scenarios: Annotated[str, typer.Option(help="dermoscopic (test JPEGs as-is), clinical (upscaled 1600x1200)")] =
        "dermoscopic,clinical",
    levels: Annotated[str, typer.Option(help="concurrency sweep, single-image requests")] = "1,2,4,8,16,32,64",
    multi_levels: Annotated[str, typer.Option(help="concurrency levels for multi-image requests ('' = none)")] =
        "1,8,32",
    multi_images: Annotated[int, typer.Option(help="images per multi-image request")] = 8,
    duration: Annotated[float, typer.Option(help="seconds measured per point")] = 8.0,
    warmup: Annotated[float, typer.Option(help="seconds of load before each point (not measured)")] = 1.0,
    images: Annotated[int, typer.Option(help="test-split images used (0 = all)")] = 256,
    clinical_count: Annotated[int, typer.Option(help="images upscaled for the clinical scenario")] = 64,
    half_load_point: Annotated[bool, typer.Option("--half-load/--no-half-load",
                                                  help="paced point at half of each server's saturated rate")] = True,
    limit_seconds: Annotated[float, typer.Option(help="seconds per limit measurement")] = 3.0,
    limit_batches: Annotated[str, typer.Option(help="batch sizes tried for the limit")] = "1,8,32,64",
    limit_threads: Annotated[str, typer.Option(help="(intra_op,decode) thread pairs tried, e.g. 2:2,1:2")] =
        "1:1,1:2,2:1,2:2",
    variant: Annotated[list[str], typer.Option(help="extra dermserve system NAME:KEY=VAL[,KEY=VAL] "
                                                    "(DERMSERVE_ prefix optional); repeatable")] = [],  # noqa: B006
    checkout: Annotated[list[str], typer.Option(help="extra dermserve system NAME=PATH run from another checkout "
                                                     "of this repo at default settings (e.g. a git worktree of "
                                                     "the commit before a change); repeatable")] = [],  # noqa: B006
    checkout_model: Annotated[str, typer.Option(help="model of the --checkout systems: same = --model-dir (a "
                                                     "code-only before/after), own = the checkout's own "
                                                     "models/default")] = "same",
    limit_model: Annotated[list[str], typer.Option(help="extra in-process limit system limit@NAME for another "
                                                        "model: NAME=MODEL_DIR or NAME=git:REV[:PATH] (PATH "
                                                        "default models/default, extracted to .bench-cache/models/"
                                                        "); same grid, interleaved with limit; "
                                                        "repeatable")] = [],  # noqa: B006
    mlserver_batch_time_ms: Annotated[float, typer.Option(help="MLServer max_batch_time (ms)")] = 10.0,
    mlserver_batch_size: Annotated[int, typer.Option(help="MLServer max_batch_size")] = 32,
    model_dir: Annotated[Path, typer.Option(help="model directory")] = REPO_ROOT / "models" / "default",
    data_dir: Annotated[Path, typer.Option(help="HAM10000 folder with labels.csv")] =
        REPO_ROOT.parent / "shared" / "data" / "ham10000",
    out_dir: Annotated[Path, typer.Option(help="where results.json, results.png and report.txt go")] =
        BENCH_DIR / "results",
) -> None:
    """Run the benchmark; print a table; write JSON, a PNG plot and a text report."""
    sys_list = [s.strip() for s in systems.split(",") if s.strip()]
    unknown = set(sys_list) - set(SYSTEMS)
    if unknown:
        raise typer.BadParameter(f"unknown systems {sorted(unknown)}")
    model_dir = model_dir.resolve()
    variants, checkouts, limit_model_dirs = model_options(variant, checkout, checkout_model, limit_model, model_dir)
    http_systems = [s for s in sys_list if s != "limit"]
    if (http_systems or variants or checkouts) and not shutil.which("wrk"):
        raise typer.BadParameter("wrk not found: apt-get install -y --no-install-recommends wrk "
                                 "(see benchmarks/README.md)")
    sc_list = [s.strip() for s in scenarios.split(",") if s.strip()]
    if set(sc_list) - {"dermoscopic", "clinical"}:
        raise typer.BadParameter(f"unknown scenario {sorted(set(sc_list) - {'dermoscopic', 'clinical'})}")
    out_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc)

    base_images = load_test_images(data_dir, images)
    scenario_images = {sc: base_images if sc == "dermoscopic" else clinical_images(base_images, clinical_count)
                       for sc in sc_list}

    from service.runtime import ModelRuntime

    ref_runtime = ModelRuntime(model_dir, ["CPUExecutionProvider"], intra_op_threads=1)
    work = Path(tempfile.mkdtemp(prefix="dermbench-", dir=CACHE_DIR if CACHE_DIR.is_dir() else None))
    servers: list[Server] = []
    points: list[Point] = []
    limits: dict[str, dict] = {}
    try:
        servers = make_servers(http_systems, model_dir, variants, work, mlserver_batch_time_ms, mlserver_batch_size,
                               checkouts, checkout_model)
        start_and_check(servers, base_images, ref_runtime)
        plan = Plan(_ints(levels), _ints(multi_levels), multi_images, duration, warmup, half_load_point,
                    limit_threads, limit_batches, limit_seconds)
        lims = ([Limit(model_dir)] if "limit" in sys_list else []) + [
            Limit(d, name) for name, d in limit_model_dirs.items()]
        for sc in sc_list:
            points += run_scenario(plan, servers, lims, sc, scenario_images[sc], work, limits)
    finally:
        for s in servers:
            s.stop()

    settings = {"duration_s": duration, "warmup_s": warmup, "images": len(base_images),
                "clinical_images": clinical_count if "clinical" in sc_list else 0,
                "multi_images": multi_images, "mlserver_max_batch_time_ms": mlserver_batch_time_ms,
                "mlserver_max_batch_size": mlserver_batch_size, "variants": variants,
                "checkouts": {name: str(p) for name, p in checkouts.items()}, "checkout_model": checkout_model,
                "limit_models": {name: str(d) for name, d in limit_model_dirs.items()}}
    write_results(out_dir, started, model_dir, settings, servers, limits, limit_model_dirs, points)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    app()
