"""What a run reports: ratios between systems, the issue's targets, the printed table, the plot, and
the versions and machine it ran on."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
from pathlib import Path

import typer

from benchmarks.servers import MLSERVER_VENV
from benchmarks.wrk import Point


def pct_ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _median(values) -> float | None:
    return statistics.median(values) if values else None


def limit_model_ratios(limit_entry: dict | None, extra: dict, scenario: str) -> dict:
    """Each ``limit@NAME`` next to the bundled model's ``limit`` in ``scenario``: its images/s and CPU ms per
    image (medians of the re-measurements) and their ratios to the limit's (``over_limit``: limit@NAME /
    limit; None without a ``limit`` entry)."""
    lim = limit_entry or {}
    lim_ips, lim_cpu = lim.get("images_per_s"), _median(lim.get("cpu_ms_per_image"))
    out = {}
    for name, e in extra.items():
        entry = e.get("scenarios", {}).get(scenario)
        if not entry:
            continue
        ips, cpu = entry.get("images_per_s"), _median(entry.get("cpu_ms_per_image"))
        out[name] = {"model_version": e.get("model", {}).get("version"), "images_per_s": ips,
                     "over_limit": pct_ratio(ips, lim_ips), "cpu_ms_per_image": cpu,
                     "cpu_ms_over_limit": pct_ratio(cpu, lim_cpu)}
    return out


def compute_ratios(points: list[Point], limit: dict, extra: dict | None = None) -> dict:
    """dermserve / limit at saturation; dermserve / naive and / mlserver at each concurrency; each
    ``limit@NAME`` (``extra``, results.json's ``limit_models``) / limit."""
    out: dict = {}
    extra = extra or {}
    scenarios = {p.scenario for p in points} | set(limit)
    scenarios |= {sc for e in extra.values() for sc in e.get("scenarios", {})}
    for scenario in sorted(scenarios):
        sc: dict = {}
        single = [p for p in points if p.scenario == scenario and p.per_request == 1 and not p.paced_delay_ms]
        by = {(p.system, p.concurrency): p for p in single}
        systems = sorted({p.system for p in single})
        sat = {s: max((p.images_per_s for p in single if p.system == s), default=None) for s in systems}
        sc["saturated_images_per_s"] = sat
        lim = limit.get(scenario, {}).get("images_per_s")
        sc["limit_images_per_s"] = lim
        sc["limit_cpu_ms_per_image"] = _median(limit.get(scenario, {}).get("cpu_ms_per_image"))
        if extra:
            sc["limit_models"] = limit_model_ratios(limit.get(scenario), extra, scenario)
        sc["dermserve_over_limit"] = pct_ratio(sat.get("dermserve"), lim)
        multi = [p for p in points if p.scenario == scenario and p.per_request > 1 and p.system == "dermserve"]
        if multi and lim:
            sc["dermserve_multi_over_limit"] = max(p.images_per_s for p in multi) / lim
        levels = sorted({p.concurrency for p in single})
        for peer in ("naive", "mlserver"):
            rows = {}
            for c in levels:
                d, o = by.get(("dermserve", c)), by.get((peer, c))
                if d and o:
                    rows[str(c)] = {"throughput_ratio": pct_ratio(d.images_per_s, o.images_per_s),
                                    "p99_dermserve_ms": d.p99_ms, f"p99_{peer}_ms": o.p99_ms,
                                    "p50_diff_ms": None if d.p50_ms is None or o.p50_ms is None
                                    else d.p50_ms - o.p50_ms}
            sc[f"dermserve_over_{peer}"] = rows
        out[scenario] = sc
    return out


def evaluate_targets(ratios: dict, points: list[Point], servers: dict, scenario: str = "dermoscopic") -> list[dict]:
    """The issue's targets, each ``{target, value, met}`` (on the dermoscopic scenario, single images)."""
    sc = ratios.get(scenario)
    if not sc or not any(p.scenario == scenario for p in points):  # a limit-only run has no targets
        return []
    t: list[dict] = []

    def add(name: str, value, met) -> None:
        t.append({"target": name, "value": value, "met": met})

    r = sc.get("dermserve_over_limit")
    add("saturated throughput >= 0.9 x limit", r, None if r is None else r >= 0.9)
    n32, m32 = sc.get("dermserve_over_naive", {}).get("32"), sc.get("dermserve_over_mlserver", {}).get("32")
    if n32:
        add("c=32: >= 1.3 x naive throughput", n32["throughput_ratio"], n32["throughput_ratio"] >= 1.3)
        add("c=32: p99 lower than naive", [n32["p99_dermserve_ms"], n32["p99_naive_ms"]],
            n32["p99_dermserve_ms"] < n32["p99_naive_ms"])
    if m32:
        add("c=32: >= 1.25 x MLServer throughput", m32["throughput_ratio"], m32["throughput_ratio"] >= 1.25)
        add("c=32: p99 lower than MLServer", [m32["p99_dermserve_ms"], m32["p99_mlserver_ms"]],
            m32["p99_dermserve_ms"] < m32["p99_mlserver_ms"])
    m1, n1 = sc.get("dermserve_over_mlserver", {}).get("1"), sc.get("dermserve_over_naive", {}).get("1")
    if m1:
        add("c=1: >= 4 x MLServer throughput", m1["throughput_ratio"], m1["throughput_ratio"] >= 4)
    if n1:
        add("c=1: p50 within 1 ms of naive", n1["p50_diff_ms"], n1["p50_diff_ms"] <= 1.0)
    c1 = next((p for p in points if p.scenario == scenario and p.system == "dermserve" and p.concurrency == 1
               and p.per_request == 1 and not p.paced_delay_ms), None)
    half = next((p for p in points if p.scenario == scenario and p.system == "dermserve" and p.paced_delay_ms), None)
    if c1 and half and c1.p99_ms:
        add("p99 at half saturated load <= 2 x c=1 p99", [half.p99_ms, c1.p99_ms], half.p99_ms <= 2 * c1.p99_ms)
    ds = servers.get("dermserve")
    if ds:
        add("ready in <= 5 s", ds["cold_start_s"], ds["cold_start_s"] is not None and ds["cold_start_s"] <= 5)
        add("RSS <= 500 MB under load", ds["rss_load_mb"], ds["rss_load_mb"] <= 500)
    return t


def fmt(v, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def _model_label(model: dict | None) -> str:
    return f"model {model.get('name')} {model.get('version')}" if model else "model ?"


def limit_lines(label: str, lim: dict, model: dict | None) -> list[str]:
    """The report's lines for one in-process limit (``limit`` or ``limit@NAME``) in one scenario."""
    lines = [(f"{label} (in-process, {_model_label(model)}, {lim['config']}): {lim['images_per_s']:.1f} images/s "
              f"(re-measured {len(lim['samples'])}x: {min(lim['samples']):.0f}-{max(lim['samples']):.0f})")]
    if lim.get("cpu_ms_per_image"):
        lines.append(f"{label} CPU: {statistics.median(lim['cpu_ms_per_image']):.2f} CPU ms per image, "
                     f"{statistics.median(lim['cores']):.2f} cores busy (median of the re-measurements)")
    return lines


def limits_table(scenario: str, limit: dict, extra: dict, model: dict | None, ratios: dict) -> list[str]:
    """One row per in-process limit of ``scenario`` (the bundled ``limit`` first), with the ratio to it."""
    rows = []
    if scenario in limit:
        lim = limit[scenario]
        rows.append(("limit", model, lim.get("images_per_s"), _median(lim.get("cpu_ms_per_image")), 1.0))
    by_name = ratios.get(scenario, {}).get("limit_models", {})
    for name, e in extra.items():
        if scenario in e.get("scenarios", {}):
            r = by_name.get(name, {})
            rows.append((name, e.get("model"), r.get("images_per_s"), r.get("cpu_ms_per_image"), r.get("over_limit")))
    if not extra or not rows:
        return []
    lines = ["-- in-process limits (median of the re-measurements; x limit = images/s over the limit's) --",
             f"{'system':<22} {'model':<36} {'version':>10} {'img/s':>8} {'CPU ms/img':>10} {'x limit':>8}"]
    for name, m, ips, cpu, ratio in rows:
        lines.append(f"{name:<22} {(m or {}).get('name', '?'):<36} {(m or {}).get('version', '?')!s:>10} "
                     f"{fmt(ips, '8.1f')} {fmt(cpu, '10.2f')} {fmt(ratio, '8.2f')}")
    return lines


def print_table(points: list[Point], limit: dict, servers: dict, ratios: dict, targets: list[dict],
                extra: dict | None = None, model: dict | None = None) -> str:
    """The report: per scenario the limits and every point; servers; ratios; targets. ``extra``: the
    ``limit@NAME`` systems (results.json's ``limit_models``); ``model``: the bundled limit's model info."""
    extra = extra or {}
    lines = []
    scenarios = {p.scenario for p in points} | set(limit)
    scenarios |= {sc for e in extra.values() for sc in e.get("scenarios", {})}
    for scenario in sorted(scenarios):
        lim = limit.get(scenario)
        lines.append(f"\n== scenario {scenario} ==")
        if lim:
            lines += limit_lines("limit", lim, model)
        for name, e in extra.items():
            if scenario in e.get("scenarios", {}):
                lines += limit_lines(name, e["scenarios"][scenario], e.get("model"))
        lines += limits_table(scenario, limit, extra, model, ratios)
        for per_request in sorted({p.per_request for p in points if p.scenario == scenario}):
            lines.append(f"-- {per_request} image(s) per request --")
            lines.append(f"{'conc':>5} {'system':<22} {'img/s':>8} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} "
                         f"{'p99 ms':>8} {'errors':>6} {'srv cores':>9} {'cli cores':>9} {'srv ms/img':>10} "
                         f"{'cli ms/req':>10} {'batch':>6} {'model ms/img':>12}")
            pts = sorted((p for p in points if p.scenario == scenario and p.per_request == per_request),
                         key=lambda p: (bool(p.paced_delay_ms), p.concurrency, p.system))
            for p in pts:
                conc = f"{p.concurrency}" + ("p" if p.paced_delay_ms else "")
                x = p.extra
                lines.append(f"{conc:>5} {p.system:<22} {p.images_per_s:8.1f} {p.requests_per_s:8.1f} "
                             f"{fmt(p.p50_ms, '8.2f')} {fmt(p.p95_ms, '8.2f')} {fmt(p.p99_ms, '8.2f')} {p.errors:6d} "
                             f"{fmt(x.get('server_cores'), '9.2f')} {fmt(x.get('client_cores'), '9.2f')} "
                             f"{fmt(x.get('server_cpu_ms_per_image'), '10.2f')} "
                             f"{fmt(x.get('client_cpu_ms_per_request'), '10.2f')} "
                             f"{fmt(x.get('mean_batch_images'), '6.1f')} {fmt(x.get('model_ms_per_image'), '12.2f')}")
    lines.append("\n== servers ==")
    for name, s in servers.items():
        m = s.get("model")
        served = (f", {_model_label(m)} (sha256 {m.get('sha256', '?')[:12]}, {m.get('dir')})" if m else "")
        code = f", code {s['code_dir']}" if s.get("code_dir") else ""
        lines.append(f"{name:<22} ready in {fmt(s['cold_start_s'], '.2f')} s, RSS at rest {fmt(s['rss_rest_mb'])} MB, "
                     f"under load {fmt(s['rss_load_mb'])} MB{served}{code}")
    lines.append("\n== ratios ==")
    for scenario, sc in ratios.items():
        if sc.get("saturated_images_per_s"):  # HTTP points were measured
            lines.append(f"[{scenario}] dermserve/limit at saturation: {fmt(sc.get('dermserve_over_limit'), '.2f')}"
                         + (f" (multi-image requests: {sc['dermserve_multi_over_limit']:.2f})"
                            if "dermserve_multi_over_limit" in sc else ""))
        for name, r in sc.get("limit_models", {}).items():
            inv = None if not r.get("over_limit") else 1 / r["over_limit"]
            lines.append(f"[{scenario}] {name}/limit (in-process images/s): {fmt(r.get('over_limit'), '.2f')} "
                         f"(limit/{name}: {fmt(inv, '.3f')}); CPU ms per image {name}/limit: "
                         f"{fmt(r.get('cpu_ms_over_limit'), '.2f')}")
        for peer in ("naive", "mlserver"):
            rows = sc.get(f"dermserve_over_{peer}", {})
            if rows:
                lines.append(f"[{scenario}] dermserve/{peer} throughput by concurrency: " + ", ".join(
                    f"c={c}: {fmt(r['throughput_ratio'], '.2f')}" for c, r in rows.items()))
    if targets:
        lines.append("\n== targets (dermoscopic, single-image requests) ==")
        for t in targets:
            v = t["value"]
            vs = ", ".join(fmt(x, ".2f") for x in v) if isinstance(v, list) else fmt(v, ".2f")
            lines.append(f"{'MET    ' if t['met'] else 'NOT MET' if t['met'] is False else 'n/a    '} "
                         f"{t['target']}: {vs}")
    text = "\n".join(lines)
    typer.echo(text)
    return text


def plot(points: list[Point], limit: dict, path: Path, extra: dict | None = None) -> None:
    """Throughput vs p99 per scenario (1 image/request), each in-process limit (``limit``, ``limit@NAME``) a
    vertical line; a scenario with limits only (no HTTP points) gets a bar per limit instead."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        typer.echo("matplotlib not installed: no plot", err=True)
        return
    extra = extra or {}
    scenarios = {p.scenario for p in points} | set(limit)
    scenarios |= {sc for e in extra.values() for sc in e.get("scenarios", {})}
    scenarios = sorted(scenarios)
    if not scenarios:
        return
    fig, axes = plt.subplots(1, len(scenarios), figsize=(6.5 * len(scenarios), 5), squeeze=False)
    styles = ["--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1))]
    for ax, scenario in zip(axes[0], scenarios):
        lims = ([("limit", limit[scenario]["images_per_s"])] if scenario in limit else []) + [
            (f"{name} ({e.get('model', {}).get('version', '?')})", e["scenarios"][scenario]["images_per_s"])
            for name, e in extra.items() if scenario in e.get("scenarios", {})]
        pts = [p for p in points if p.scenario == scenario and p.per_request == 1 and not p.paced_delay_ms]
        if not pts:
            ax.barh([name for name, _ in lims], [ips for _, ips in lims], color="grey")
            for i, (_, ips) in enumerate(lims):
                ax.annotate(f"{ips:.1f}", (ips, i), fontsize=8, textcoords="offset points", xytext=(3, -3))
            ax.invert_yaxis()
            ax.set_xlabel("images/s (in-process, no HTTP)")
            ax.set_title(f"{scenario}: in-process limits")
            ax.grid(True, axis="x", alpha=0.3)
            continue
        for system in sorted({p.system for p in pts}):
            sp = sorted((p for p in pts if p.system == system and p.p99_ms), key=lambda p: p.concurrency)
            ax.plot([p.images_per_s for p in sp], [p.p99_ms for p in sp], marker="o", label=system)
            for p in sp:
                ax.annotate(str(p.concurrency), (p.images_per_s, p.p99_ms), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
        for i, (name, ips) in enumerate(lims):
            ax.axvline(ips, color="grey", linestyle=styles[i % len(styles)], label=f"{name} (no HTTP)")
        ax.set_yscale("log")
        ax.set_xlabel("throughput (images/s)")
        ax.set_ylabel("p99 latency (ms, log)")
        ax.set_title(f"{scenario}: 1 image/request, labels = concurrency")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    v = {"python": platform.python_version()}
    for pkg in ("onnxruntime", "fastapi", "starlette", "uvicorn", "pillow", "numpy", "python-multipart"):
        try:
            v[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    if (MLSERVER_VENV / "bin" / "python").is_file():
        r = subprocess.run([str(MLSERVER_VENV / "bin" / "python"), "-c",
                            "import mlserver; print(mlserver.__version__)"], capture_output=True, text=True)
        v["mlserver"] = r.stdout.strip() or None
    w = shutil.which("wrk")
    if w:
        r = subprocess.run([w, "--version"], capture_output=True, text=True)
        v["wrk"] = (r.stdout or r.stderr).split("Copyright")[0].strip()
    return v


def machine() -> dict:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": cpu, "platform": platform.platform()}
