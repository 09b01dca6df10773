"""`vsmmu fuzz --report DIR`: how a campaign went, as a page to hand to someone.

`DIR/report.html` is self-contained (styles inline, plots as inline SVG: no
script, no network, no plotting package): the summary, executions, coverage
and corpus size over time, findings as they came, the coverage tables, and each
finding with its minimized program and the `vsmmu check` line that replays
it.  `DIR/report.json` holds the same figures for scripts:

    {"result": <vsmmu fuzz --json>, "timeline": [{"t", "target", "execs", "cov",
     "corpus"}], "findings": [{"signature", "target", "artifact", "found_after",
     "program", "minimized": {"ops", "complete", "seconds"}, "check"}]}

Each finding is minimized with `vsmmu triage`'s minimizer for at most
MINIMIZE_BUDGET seconds (its program is the artifact's when it does not
reproduce, say an unreproduced or a timeout).
"""

from __future__ import annotations

import html
import json
import shlex
from pathlib import Path
from typing import Any

from vsmmu.platform import DEFAULT_DESIGN

from .harness import Settings, make_runner, planted
from .program import MAX_BYTES, decode, to_text
from .results import GROUPS, CampaignResult, Finding, groups_of
from .triage import minimize

MINIMIZE_BUDGET = 10.0  # seconds per finding
PLOTS = (("execs", "executions"), ("cov", "libFuzzer cov"), ("corpus", "corpus inputs"))
WIDTH, HEIGHT, PAD, LEGEND = 720, 200, 40, 110  # the legend sits right of the plot
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def write(result: CampaignResult, directory: str | Path, *, platform: str | None = None,
          plant: str | None = None) -> str | None:
    """Write the report; an error line when the directory cannot be written."""
    out = Path(directory)
    findings = [_finding(f, platform, plant) for f in result.findings]
    data = {"result": result.as_dict(), "timeline": result.timeline, "findings": findings}
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(data, indent=1) + "\n")
        (out / "report.html").write_text(page(result, findings))
    except OSError as e:
        return f"cannot write the report in {directory}: {e.strerror}"
    return None


def _finding(f: Finding, platform: str | None, plant: str | None) -> dict[str, Any]:
    check = ["vsmmu", "check", "--target", f.target, *(["--platform", platform] if platform
                                                       else []),
             *(["--design", f.design] if f.design != DEFAULT_DESIGN else []), f.artifact]
    entry = {"signature": f.signature, "target": f.target, "artifact": f.artifact,
             "found_after": f.found_after, "program": None, "minimized": None,
             "check": shlex.join(check)}
    try:
        with open(f.artifact, "rb") as fh:
            ops = decode(fh.read(MAX_BYTES))
    except OSError:
        return entry
    entry["program"] = to_text(ops)
    try:
        with planted(plant):
            runner = make_runner(f.target, Settings(platform=platform, design=f.design))
            small = minimize(runner, ops, f.signature, budget=MINIMIZE_BUDGET)
    except (ValueError, KeyError):  # does not reproduce as that signature, or no such target
        return entry
    entry["minimized"] = {"ops": to_text(small.ops), "complete": small.complete,
                          "seconds": round(small.seconds, 1)}
    return entry


# ------------------------------------------------------------------ the page
def page(r: CampaignResult, findings: list[dict[str, Any]]) -> str:
    e = html.escape
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8>"
             f"<title>vsmmu fuzz {e(r.target)}: {len(r.findings)} findings</title>"
             f"<style>{_STYLE}</style></head><body>",
             f"<h1>vsmmu fuzz {e(r.target)}</h1>",
             "<table class=summary>" + "".join(
                 f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in (
                     ("seconds", f"{r.seconds:.1f}"), ("executions", f"{r.execs:,}"),
                     ("executions per second", f"{r.execs_per_sec:,.1f}"),
                     ("corpus", r.corpus), ("libFuzzer cov", r.cov),
                     ("unique findings", len(r.findings)),
                     ("interrupted", "yes" if r.interrupted else "no"),
                     ("corpus in", r.corpus_dir), ("artifacts in", r.artifacts_dir))) +
             "</table>"]
    if r.parts:
        parts.append("<h2>Targets</h2><table>" + _row(
            "th", "target", "seconds", "executions", "per second", "corpus", "cov",
            "findings") + "".join(_row("td", p.target, f"{p.seconds:.1f}", f"{p.execs:,}",
                                       f"{p.execs_per_sec:,.1f}", p.corpus, p.cov,
                                       len(p.findings)) for p in r.parts) + "</table>")
    parts.append("<h2>Over time</h2>")
    for key, label in PLOTS:
        parts.append(_plot(r.timeline, key, label, per_target=key != "execs"))
    times = sorted(f.found_after for f in r.findings if f.found_after is not None)
    found = [{"t": t, "target": "findings", "n": i + 1} for i, t in enumerate(times)]
    parts.append(_plot(found, "n", "new findings", per_target=False, steps=True,
                       t_max=r.seconds))
    parts.append("<h2>Findings</h2>")
    if not findings:
        parts.append("<p>none</p>")
    for f in findings:
        when = f"after {f['found_after']:.0f} s" if f["found_after"] is not None else "earlier"
        parts.append(f"<section class=finding><h3>{e(f['signature'])}</h3>"
                     f"<p>{e(f['target'])} target, found {when}: <code>{e(f['artifact'])}"
                     f"</code></p><p>replay: <code>{e(f['check'])}</code></p>")
        if f["minimized"]:
            m = f["minimized"]
            parts.append(f"<p>minimized ({'complete' if m['complete'] else 'budget spent'}, "
                         f"{m['seconds']} s):</p><pre>{e(m['ops'])}</pre>")
        elif f["program"] is not None:
            parts.append(f"<p>program (not minimized):</p><pre>{e(f['program'])}</pre>")
        parts.append("</section>")
    parts.append("<h2>Coverage</h2><table class=coverage>"
                 + _row("th", "group", "reached", "missing"))
    for group in groups_of(r.target):
        names = GROUPS[group][1]
        got = r.coverage.get(group, [])
        missing = [n for n in names if n not in got]
        parts.append(_row("td", group, f"{len(got)}/{len(names)}", " ".join(missing) or "none"))
    parts.append("</table></body></html>\n")
    return "".join(parts)


def _row(cell: str, *values: object) -> str:
    return "<tr>" + "".join(f"<{cell}>{html.escape(str(v))}</{cell}>" for v in values) + "</tr>"


def _plot(samples: list[dict[str, Any]], key: str, label: str, *, per_target: bool,
          steps: bool = False, t_max: float | None = None) -> str:
    """One SVG line chart of `key` against time; a line per target when asked;
    `steps`: a count from 0 that jumps at each sample, held until `t_max`."""
    e = html.escape
    if not samples:
        return f"<figure><figcaption>{e(label)}: no samples</figcaption></figure>"
    series: dict[str, list[tuple[float, float]]] = {}
    for s in samples:
        series.setdefault(s["target"] if per_target else label, []).append((s["t"], s[key]))
    t_max = max([t_max or 0.0, *(t for pts in series.values() for t, _ in pts)]) or 1.0
    y_max = max(y for pts in series.values() for _, y in pts) or 1.0

    def xy(t: float, y: float) -> str:
        return (f"{PAD + (WIDTH - 2 * PAD - LEGEND) * t / t_max:.1f},"
                f"{HEIGHT - PAD - (HEIGHT - 2 * PAD) * y / y_max:.1f}")

    out = [f"<figure><svg viewBox='0 0 {WIDTH} {HEIGHT}' width={WIDTH} height={HEIGHT} "
           f"role=img aria-label='{e(label)} over time'>",
           f"<line x1={PAD} y1={HEIGHT - PAD} x2={WIDTH - PAD - LEGEND} y2={HEIGHT - PAD} "
           "class=axis />",
           f"<line x1={PAD} y1={PAD} x2={PAD} y2={HEIGHT - PAD} class=axis />",
           f"<text x={PAD} y={PAD - 8}>{y_max:,.0f}</text>",
           f"<text x={WIDTH - PAD - LEGEND} y={HEIGHT - PAD + 16} text-anchor=end>"
           f"{t_max:.0f} s</text>"]
    for i, (name, pts) in enumerate(sorted(series.items())):
        if steps:
            held = [(0.0, 0.0)]
            for t, y in pts:
                held += [(t, held[-1][1]), (t, y)]
            pts = [*held, (t_max, held[-1][1])]
        colour = COLOURS[i % len(COLOURS)]
        out.append(f"<polyline fill=none stroke='{colour}' stroke-width=1.5 "
                   f"points='{' '.join(xy(t, y) for t, y in pts)}'><title>{e(name)}</title>"
                   "</polyline>")
        out.append(f"<text x={WIDTH - PAD - LEGEND + 8} y={PAD + 14 * i} fill='{colour}' "
                   f"font-size=11>{e(name)}</text>")
    out.append(f"</svg><figcaption>{e(label)} over time</figcaption></figure>")
    return "".join(out)


_STYLE = ("body{font-family:sans-serif;max-width:60em;margin:1em auto;padding:0 1em}"
          "table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;"
          "padding:.2em .5em;text-align:left;vertical-align:top}"
          "table.coverage td:nth-child(3){font-size:.85em}"
          "pre{background:#f6f6f6;padding:.5em;overflow-x:auto}"
          "svg .axis{stroke:#888}svg text{font-size:11px}figure{margin:.5em 0}"
          "section.finding{border-left:3px solid #d62728;padding-left:.8em}")
