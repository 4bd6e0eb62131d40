"""Plotly figures of an evaluation report (`evaluate.py`), built from `report.json` alone.

`figures(report)` gives every figure by name; `write_figures` saves each as
`NAME.json` (`fig.to_json()`) and `NAME.html` (plotly.js once, as `plotly.min.js`
beside them, so the pages work offline). The app's Diagnostics page draws the same
figures from the same report.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .metrics import CONFIDENT, FD_NAME

ENSEMBLE, MEMBER, REFERENCE, PHANTOM = "#1f77b4", "#aab4c3", "#2ca02c", "#d62728"


def figures(report: dict) -> dict[str, go.Figure]:
    """Every figure the report has data for, by name."""
    out = {}
    if "fidelity" in report:
        out["fidelity"] = fidelity_figure(report["fidelity"])
        out["confidence"] = confidence_figure(report["fidelity"])
    if "convergence" in report:
        out["convergence"] = convergence_figure(report["convergence"])
    if report.get("attribution", {}).get("rules"):
        out["methods"] = methods_figure(report["attribution"])
    if report.get("candidate", {}).get("rules"):
        out["tar"] = tar_figure(report["candidate"], report.get("run", {}).get("N"))
        out["flip_rates"] = flip_rate_figure(report["candidate"])
    if any(r.get("tar") for r in report.get("by_n", [])):
        out["tar_by_n"] = tar_by_n_figure(report["by_n"])
    if report.get("cost_seconds"):
        out["cost"] = cost_figure(report["cost_seconds"])
    return out


def write_figures(report: dict, out: str | Path) -> list[str]:
    out = Path(out)
    names = []
    for name, fig in figures(report).items():
        (out / f"{name}.json").write_text(fig.to_json())
        fig.write_html(out / f"{name}.html", include_plotlyjs="directory")
        names.append(name)
    return names


def _layout(fig: go.Figure, title: str, **kw) -> go.Figure:
    fig.update_layout(
        title=title,
        template="plotly_white",
        height=kw.pop("height", 380),
        margin=kw.pop("margin", dict(l=50, r=20, t=100, b=50)),
        legend=kw.pop("legend", dict(x=1, xanchor="right", y=1, yanchor="top",
                                     bgcolor="rgba(255,255,255,0.7)")),
        **kw,
    )
    return fig


def fidelity_figure(f: dict) -> go.Figure:
    members = [f"member {i}" for i in range(len(f["fd_members"]))]
    x = ["ensemble", *members, "real vs real", "training set"]
    y = [f["fd_ensemble"], *f["fd_members"], f["fd_real_halves"], f["fd_train_set"]]
    colors = [ENSEMBLE, *[MEMBER] * len(members), REFERENCE, REFERENCE]
    fig = go.Figure(
        go.Bar(x=x, y=y, marker_color=colors, hovertemplate="%{x}: FD %{y:.3g}<extra></extra>")
    )
    return _layout(
        fig,
        f"FD to real held-out images ({f['n_samples']} samples each)<br><sup>{FD_NAME}; "
        "lower is closer<br>references: real vs real (two halves), the training set</sup>",
        yaxis_title="FD (classifier features)",
    )


def confidence_figure(f: dict) -> go.Figure:
    members = [f"member {i}" for i in range(len(f["confident_members"]))]
    x = ["ensemble", *members, "real images"]
    y = [f["confident_ensemble"], *f["confident_members"], f["confident_real"]]
    colors = [ENSEMBLE, *[MEMBER] * len(members), REFERENCE]
    fig = go.Figure(
        go.Bar(x=x, y=y, marker_color=colors, hovertemplate="%{x}: %{y:.1%}<extra></extra>")
    )
    fig.update_yaxes(range=[0, 1], tickformat=".0%")
    return _layout(
        fig,
        f"Classifier confidence ≥ {CONFIDENT}<br><sup>share of samples (or real images) "
        "labelled that confidently</sup>",
        yaxis_title="share",
    )


def convergence_figure(c: dict) -> go.Figure:
    fig = make_subplots(
        1,
        2,
        subplot_titles=(
            "mean L2 distance to the full ensemble (same noise)",
            "FD to real images (classifier features)",
        ),
    )
    ks = [int(k) for k in c["by_k"]]
    for col, key in ((1, "l2_mean"), (2, "fd")):
        fig.add_trace(
            go.Scatter(
                x=[e["k"] for e in c["entries"]],
                y=[e[key] for e in c["entries"]],
                mode="markers",
                marker=dict(color=MEMBER, size=8),
                name="one random draw",
                showlegend=col == 1,
                text=[f"members {e['members']}" for e in c["entries"]],
            ),
            1,
            col,
        )
        fig.add_trace(
            go.Scatter(
                x=ks,
                y=[c["by_k"][str(k)][key] for k in ks],
                mode="lines+markers",
                line=dict(color=ENSEMBLE),
                name="mean over draws",
                showlegend=col == 1,
            ),
            1,
            col,
        )
        fig.update_xaxes(title_text="members in the sub-ensemble k", tickvals=ks, row=1, col=col)
    return _layout(
        fig,
        f"Convergence: sub-ensembles of k members ({c['n_samples']} samples each)"
        f"<br><sup>{FD_NAME}</sup>",
        height=420,
    )


RULE_COLOR = {"mean": MEMBER, "mixture": ENSEMBLE}


def methods_figure(a: dict) -> go.Figure:
    """Top-1 agreement with exact of every method, per rule (default score), against the
    threshold below which a method fails."""
    from .agreement import FAIL_TOP1
    from .scores import DEFAULT_SCORE

    fig = go.Figure()
    for rule, r in a.get("rules", {}).items():
        methods = [m for m in r["methods"] if m != "exact"]
        y = [r["methods"][m]["scores"][DEFAULT_SCORE]["top1_agreement"] for m in methods]
        secs = [r["methods"][m]["seconds_median"] for m in methods]
        fig.add_trace(go.Bar(
            x=methods, y=y, name=f"{rule} ({len(r['seeds'])} seeds)", customdata=secs,
            marker_color=RULE_COLOR.get(rule, ENSEMBLE),
            hovertemplate="%{x}: top-1 agrees %{y:.0%} · %{customdata:.1f} s<extra>" + rule
            + "</extra>"))
    fig.add_hline(y=FAIL_TOP1, line_dash="dash", line_color=PHANTOM,
                  annotation_text=f"fails below {FAIL_TOP1:.0%}", annotation_position="top left")
    return _layout(fig, f"Top-1 agreement with exact ({DEFAULT_SCORE} score)",
                   barmode="group", yaxis=dict(range=[0, 1.05], tickformat=".0%"))


def tar_figure(cand: dict, N: int | None) -> go.Figure:
    """TAR per combination rule with its 95% interval, beside the paper's figure."""
    from .candidate import PAPER_TAR

    fig = go.Figure()
    rules = list(cand["rules"])
    for rule in rules:
        t = cand["rules"][rule]
        fig.add_bar(
            x=[rule], y=[t["tar"]], name=rule, marker_color=RULE_COLOR.get(rule, ENSEMBLE),
            error_y=dict(type="data", symmetric=False, array=[t["tar_high"] - t["tar"]],
                         arrayminus=[t["tar"] - t["tar_low"]]),
            text=[f"{t['tar']:.2f}"], textposition="inside",
            hovertemplate=(f"{rule}: TAR %{{y:.2f}} ({t['tar_low']:.2f}–{t['tar_high']:.2f})<br>"
                           f"x̂ ablation changes the sample {t['p_change_candidate']:.0%}, "
                           f"a random one {t['p_change_random']:.0%}<extra></extra>"),
        )
    if N in PAPER_TAR:
        fig.add_hline(y=PAPER_TAR[N], line_dash="dash", line_color=PHANTOM,
                      annotation_text=f"paper, MNIST N = {N:,}: {PAPER_TAR[N]:.2f}")
    counts = ", ".join(f"{r} {cand['rules'][r]['samples']}" for r in rules)
    return _layout(
        fig, f"Candidate test: true attribution rate<br><sup>samples of held-out seeds: "
        f"{counts}; bars: 95% intervals</sup>", yaxis=dict(range=[-0.1, 1.1]),
        showlegend=False, height=360)


def flip_rate_figure(cand: dict) -> go.Figure:
    """Per-sample flip rates (the candidate test's p-values), per rule."""
    fig = go.Figure()
    for rule, t in cand["rules"].items():
        ps = t["per_sample"]
        changed = np.asarray(ps["changed"], dtype=bool)
        fig.add_histogram(x=np.asarray(ps["flip_rate"])[changed], name=f"{rule}: x̂ changes it",
                          marker_color=RULE_COLOR.get(rule, ENSEMBLE), opacity=0.75,
                          xbins=dict(start=0, end=1.0001, size=1 / 16))
    return _layout(
        fig, "Each sample's flip rate (its p-value)<br><sup>random ablations that change "
        "its nearest image; samples whose x̂ ablation changes it</sup>", barmode="overlay", xaxis_title="flip rate (p-value)",
        yaxis_title="samples", height=360)


def tar_by_n_figure(rows: list[dict]) -> go.Figure:
    """TAR of every run in the report against N, per rule, with the paper's MNIST curve."""
    from .candidate import PAPER_TAR

    fig = go.Figure()
    fig.add_scatter(x=list(PAPER_TAR), y=list(PAPER_TAR.values()), mode="lines+markers",
                    line=dict(dash="dash", color=PHANTOM),
                    name="paper (22 GPU UNets, 32×32)")
    rules = sorted({rule for r in rows for rule in r.get("tar", {})})
    for rule in rules:
        pts = sorted(((r["N"], r["tar"][rule]) for r in rows if rule in r.get("tar", {})),
                     key=lambda p: p[0])
        fig.add_scatter(
            x=[p[0] for p in pts], y=[p[1]["tar"] for p in pts], mode="lines+markers",
            name=rule, marker=dict(size=11, color=RULE_COLOR.get(rule, ENSEMBLE)),
            error_y=dict(type="data", symmetric=False,
                         array=[p[1]["tar_high"] - p[1]["tar"] for p in pts],
                         arrayminus=[p[1]["tar"] - p[1]["tar_low"] for p in pts]),
        )
    return _layout(
        fig, "True attribution rate vs training-set size<br><sup>this run and the runs it "
        "is compared with</sup>", xaxis=dict(type="log", title="training images N"),
        yaxis=dict(range=[-0.1, 1.1], title="TAR"), legend=dict(orientation="h", y=-0.25),
        height=400)


def cost_figure(cost: dict) -> go.Figure:
    items = [(k, v) for k, v in cost.items() if k != "total" and v is not None]
    fig = go.Figure(
        go.Bar(
            y=[_cost_label(k) for k, _ in items],
            x=[v for _, v in items],
            orientation="h",
            marker_color=ENSEMBLE,
            hovertemplate="%{y}: %{x:.1f} s<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed")
    return _layout(
        fig,
        f"Cost of each part (seconds; total {cost.get('total', 0):.0f} s)",
        xaxis_title="seconds",
        height=max(300, 28 * len(items) + 120),
    )


def _cost_label(key: str) -> str:
    """'attribution_per_seed.exact' -> 'one seed: exact'; 'compare.runs/x' -> 'compare: x'."""
    if key.startswith("attribution_per_seed."):
        return "one seed: " + key.split(".", 1)[1]
    if key.startswith("compare."):
        return "compare: " + Path(key.split(".", 1)[1]).name
    return key.replace("_", " ")
