"""A self-contained HTML report: savings summary, per-step tables, and an SVG timeline of attempts
(spot / on-demand bars, reclaims, checkpoints, escalations). No scripts, no external assets."""

from __future__ import annotations

import html
from datetime import UTC, datetime

from spot_workflows.core.outcomes import Capacity, Outcome
from spot_workflows.report import RunReport, StepReport

COLOURS = {Capacity.SPOT: "#2b8a3e", Capacity.ON_DEMAND: "#1864ab"}
ROW_H, BAR_H, LEFT, WIDTH = 34, 18, 170, 900

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#212529}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0}
.card{border:1px solid #dee2e6;border-radius:8px;padding:10px 14px;min-width:140px}
.card b{display:block;font-size:20px}.card span{color:#6c757d;font-size:12px}
table{border-collapse:collapse;font-size:13px}td,th{border-bottom:1px solid #e9ecef;padding:4px 10px;
text-align:right}th{background:#f8f9fa}td:nth-child(2),td:nth-child(3){text-align:left}
.legend span{display:inline-block;margin-right:14px;font-size:12px}
.sw{display:inline-block;width:12px;height:12px;vertical-align:middle;margin-right:4px}
.warn{color:#c92a2a}
"""


def _money(x: float | None) -> str:
    return "unpriced" if x is None else f"${x:,.4f}" if x < 1 else f"${x:,.2f}"


def _time(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def timeline_svg(step: StepReport, *, now: float) -> str:
    """One row per attempt: a grey span while waiting for capacity, a coloured bar while running,
    a red cross at a reclaim, ticks at checkpoints, an arrow where the step escalated."""
    attempts = step.attempts
    if not attempts:
        return "<p>no attempts</p>"
    t0 = min(a.submitted_at for a in attempts)
    t1 = max([a.ended_at or now for a in attempts] + [c.created_at for c in step.checkpoints])
    span = max(t1 - t0, 1e-6)

    def x(t: float) -> float:
        return LEFT + (t - t0) / span * (WIDTH - LEFT - 20)

    height = ROW_H * len(attempts) + 40
    out = [
        f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
        f'height="{height}" role="img" aria-label="attempt timeline of {html.escape(step.step_key)}">'
    ]
    escalated = False
    for i, a in enumerate(attempts):
        y = 10 + i * ROW_H
        label = f"#{a.number} {a.capacity.value} {a.outcome.value if a.outcome else a.state.value}"
        out.append(f'<text x="4" y="{y + 13}" font-size="12">{html.escape(label)}</text>')
        start = a.started_at or a.ended_at or now
        out.append(
            f'<rect class="wait" x="{x(a.submitted_at):.1f}" y="{y + 6}" '
            f'width="{max(x(start) - x(a.submitted_at), 0):.1f}" height="6" fill="#ced4da"/>'
        )
        if a.started_at is not None:
            end = a.ended_at or now
            out.append(
                f'<rect class="attempt {a.capacity.value.lower()}" x="{x(a.started_at):.1f}" '
                f'y="{y}" width="{max(x(end) - x(a.started_at), 2):.1f}" height="{BAR_H}" '
                f'rx="3" fill="{COLOURS[a.capacity]}"><title>{html.escape(label)}</title></rect>'
            )
            if a.last_checkpoint_at is not None and a.last_checkpoint_at >= a.started_at:
                kx = x(a.last_checkpoint_at)
                out.append(
                    f'<path class="last-checkpoint" d="M{kx:.1f},{y - 3} l4,4 l-4,4 l-4,-4 z" '
                    f'fill="#e8590c"><title>last checkpoint: step {a.last_checkpoint_step}'
                    "</title></path>"
                )
            if a.outcome is Outcome.PREEMPTED:
                cx = x(end)
                out.append(
                    f'<path class="reclaim" d="M{cx - 6:.1f},{y - 2} l12,{BAR_H + 4} '
                    f'M{cx + 6:.1f},{y - 2} l-12,{BAR_H + 4}" stroke="#e03131" stroke-width="3"/>'
                )
        if a.capacity is Capacity.ON_DEMAND and not escalated and i > 0:
            escalated = True
            ex = x(a.submitted_at)
            out.append(
                f'<path class="escalation" d="M{ex:.1f},{y - 12} v10 l-4,-4 m4,4 l4,-4" '
                f'stroke="#f08c00" stroke-width="2" fill="none"/>'
                f'<text x="{ex + 6:.1f}" y="{y - 3}" font-size="11" fill="#f08c00">escalated</text>'
            )
    base = 10 + len(attempts) * ROW_H
    for c in step.checkpoints:
        colour = "#e8590c" if c.emergency else "#495057"
        out.append(
            f'<line class="checkpoint" x1="{x(c.created_at):.1f}" y1="6" x2="{x(c.created_at):.1f}" '
            f'y2="{base}" stroke="{colour}" stroke-dasharray="3,3"><title>checkpoint step {c.step}'
            f"{' (emergency)' if c.emergency else ''}</title></line>"
        )
    out.append(
        f'<text x="{LEFT}" y="{base + 20}" font-size="11" fill="#6c757d">{_time(t0)}</text>'
        f'<text x="{WIDTH - 20}" y="{base + 20}" font-size="11" fill="#6c757d" '
        f'text-anchor="end">+{span:,.0f} s</text></svg>'
    )
    return "".join(out)


def render_html(report: RunReport) -> str:
    savings = "n/a" if report.savings_pct is None else f"{report.savings_pct:.1f}%"
    cards = [
        ("spent", _money(report.total_usd)),
        ("on-demand equivalent", _money(report.on_demand_equivalent_usd)),
        ("savings", savings),
        ("GPU-hours", f"{report.gpu_hours:,.3f}"),
        ("GPU-hours lost to reclaims", f"{report.gpu_hours_lost:,.3f}"),
        ("reclaims", str(report.reclaims)),
        ("waiting for capacity", f"{report.capacity_wait_hours * 3600:,.0f} s"),
    ]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>spot-workflows report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>spot-workflows cost and interruption report</h1>",
        f"<div>generated {_time(report.generated_at)}; prices: catalog {report.catalog_snapshot}"
        "</div>",
        '<div class="cards" id="summary">',
        *(f'<div class="card"><b>{html.escape(v)}</b><span>{k}</span></div>' for k, v in cards),
        "</div>",
    ]
    if report.unpriced:
        items = "".join(f"<li>{html.escape(u)}</li>" for u in report.unpriced)
        parts.append(f'<div class="warn">unpriced (not counted): <ul>{items}</ul></div>')
    if getattr(report, "skipped", None):
        items = "".join(f"<li>{html.escape(u)}</li>" for u in report.skipped)
        parts.append(f'<div class="warn">skipped (not steps): <ul>{items}</ul></div>')
    if report.reclaims_by_zone:
        rows = "".join(
            f"<tr><td>{html.escape(z)}</td><td>{n}</td></tr>"
            for z, n in sorted(report.reclaims_by_zone.items())
        )
        parts.append(
            f"<h2>Reclaims by zone</h2><table><tr><th>zone</th><th>reclaims</th></tr>{rows}</table>"
        )
    legend = (
        '<div class="legend"><span><i class="sw" style="background:#2b8a3e"></i>spot</span>'
        '<span><i class="sw" style="background:#1864ab"></i>on-demand</span>'
        '<span><i class="sw" style="background:#ced4da"></i>waiting for capacity</span>'
        '<span style="color:#e03131">✕ reclaim</span><span>┆ checkpoint</span>'
        '<span style="color:#e8590c">┆ emergency checkpoint</span>'
        '<span style="color:#e8590c">◆ last checkpoint of an attempt</span></div>'
    )
    for step in report.steps:
        c = step.cost
        parts.append(f"<h2>Step {html.escape(step.step_key)}</h2>")
        parts.append(f"<div>{html.escape(step.checkpoint_uri)}</div>{legend}")
        parts.append(timeline_svg(step, now=report.generated_at))
        head = "".join(
            f"<th>{h}</th>"
            for h in (
                "#",
                "capacity",
                "outcome",
                "instance",
                "billed s",
                "lost s",
                "wait s",
                "$/h",
                "cost",
            )
        )
        rows = "".join(
            f"<tr><td>{a.number}</td><td>{a.capacity.value}</td>"
            f"<td>{a.outcome.value if a.outcome else 'live'}</td>"
            f"<td>{html.escape(a.instance_type or '?')}</td><td>{a.billed_hours * 3600:,.1f}</td>"
            f"<td>{a.lost_hours * 3600:,.1f}</td><td>{a.wait_hours * 3600:,.1f}</td>"
            f"<td>{'' if a.hourly_usd is None else f'{a.hourly_usd:.4f}'}</td>"
            f"<td>{_money(a.cost_usd)}</td></tr>"
            for a in c.attempts
        )
        parts.append(f"<table><tr>{head}</tr>{rows}</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
