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
    a = report.get("attribution", {})
    if "agreement" in a:
        out["agreement"] = agreement_figure(a["agreement"])
    if "noise_floor" in a:
        out["noise_floor"] = noise_floor_figure(a["noise_floor"])
        out["attributability"] = attributability_figure(a["noise_floor"])
    if "class_agreement" in a:
        out["class_agreement"] = class_agreement_figure(a["class_agreement"])
    if report.get("candidate", {}).get("rules"):
        out["tar"] = tar_figure(report["candidate"], report.get("run", {}).get("N"))
        out["flip_rates"] = flip_rate_figure(report["candidate"])
    if any(r.get("tar") for r in report.get("by_n", [])):
        out["tar_by_n"] = tar_by_n_figure(report["by_n"])
    floor_rows = [r for r in report.get("by_n", []) if "share_top1_above_p99" in r]
    if floor_rows:
        out["by_n"] = by_n_figure(floor_rows)
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


def agreement_figure(a: dict) -> go.Figure:
    top = next(k for k in next(iter(a.values())) if k.startswith("top") and "_" not in k)
    fig = make_subplots(
        1, 3, subplot_titles=("Spearman vs exact", "Pearson vs exact", f"{top} overlap with exact")
    )
    for col, key in ((1, "spearman"), (2, "pearson"), (3, top)):
        for m, v in a.items():
            fig.add_trace(
                go.Box(
                    y=v[key],
                    name=m,
                    boxpoints="all",
                    jitter=0.3,
                    marker_color=ENSEMBLE,
                    showlegend=False,
                ),
                1,
                col,
            )
    fig.update_yaxes(range=[-1.05, 1.05], row=1, col=1)
    fig.update_yaxes(range=[-1.05, 1.05], row=1, col=2)
    fig.update_yaxes(range=[-0.05, 1.05], row=1, col=3)
    n = len(next(iter(a.values()))["spearman"])
    return _layout(
        fig, f"Agreement of each method with exact influence scores ({n} seeds)", height=420
    )


def noise_floor_figure(nf: dict) -> go.Figure:
    fig = go.Figure()
    if "hist_edges" in nf:
        e = np.asarray(nf["hist_edges"])
        mid, width = (e[1:] + e[:-1]) / 2, np.diff(e)
        for name, key, color in (
            ("real images", "hist_real", ENSEMBLE),
            ("phantom codes (no image)", "hist_phantom", PHANTOM),
        ):
            h = np.asarray(nf[key], dtype=float)
            fig.add_trace(
                go.Bar(
                    x=mid,
                    y=h / max(h.sum(), 1),
                    width=width,
                    name=name,
                    marker_color=color,
                    opacity=0.55,
                )
            )
        sub = (
            f"KS statistic {nf['ks_statistic']:.3f} (p = {nf['ks_pvalue']:.2g}); medians "
            f"{nf['real_median']:.3f} real vs {nf['phantom_median']:.3f} phantom"
        )
    else:
        sub = "no phantom codes left for this run: no noise floor"
    fig.update_layout(barmode="overlay")
    return _layout(
        fig,
        f"Exact scores: real images vs phantoms<br><sup>pooled over seeds<br>{sub}</sup>",
        xaxis_title="score ‖y(u₋ₓ) − y(u₀)‖",
        yaxis_title="share",
    )


def attributability_figure(nf: dict) -> go.Figure:
    s = nf["per_seed"]
    fig = go.Figure(
        go.Bar(
            x=[str(p["seed"]) for p in s],
            y=[p["top1_ratio"] for p in s],
            marker_color=[ENSEMBLE if (p["top1_ratio"] or 0) > 1 else MEMBER for p in s],
            customdata=[[p["n_above"], p["expected_above"]] for p in s],
            hovertemplate="seed %{x}: top-1 / p99 = %{y:.2f}<br>%{customdata[0]}"
            " images above p99 (chance %{customdata[1]:.1f})"
            "<extra></extra>",
        )
    )
    fig.add_hline(y=1, line_dash="dash", line_color=PHANTOM, annotation_text="phantom p99")
    share = nf["share_top1_above_p99"]
    n_images = round(s[0]["expected_above"] / 0.01) if s and s[0].get("expected_above") else 0
    chance = f" (chance alone: {1 - 0.99 ** n_images:.0%})" if n_images else ""
    return _layout(
        fig,
        f"Top-1 exact score / phantom p99, per seed<br><sup>above the noise floor on "
        f"{share:.0%} of seeds{chance}</sup>",
        xaxis_title="seed",
        yaxis_title="top-1 / phantom p99",
    )


def class_agreement_figure(c: dict) -> go.Figure:
    methods = list(c["share"])
    fig = go.Figure(
        go.Bar(
            x=methods,
            y=[c["share"][m] for m in methods],
            marker_color=ENSEMBLE,
            hovertemplate="%{x}: %{y:.1%}<extra></extra>",
        )
    )
    fig.add_hline(
        y=c["chance"],
        line_dash="dash",
        line_color=PHANTOM,
        annotation_text=f"chance {c['chance']:.1%}",
        annotation_position="top left",
    )
    fig.update_yaxes(range=[0, 1], tickformat=".0%")
    return _layout(
        fig,
        f"Top-{c['top_k']} training images of the sample's class, per method<br><sup>the "
        "sample's class is the classifier's label; dashed: chance (class frequencies)</sup>",
        yaxis_title="share of the top-k",
    )


def by_n_figure(rows: list[dict]) -> go.Figure:
    """Attributability of runs of one recipe at several N, against what chance gives."""
    fig = make_subplots(
        1,
        2,
        subplot_titles=("share of seeds with top-1 > phantom p99", "median top-1 / phantom p99"),
    )
    Ns = [r["N"] for r in rows]
    lo, hi = min(Ns) / 1.6, max(Ns) * 1.6
    hover = [
        f"{Path(r['path']).name}<br>N={r['N']}, n={r['n']}, h={r['h']}, "
        f"{r['train_steps']} steps, {r['init']} init" for r in rows
    ]
    grid = np.geomspace(lo, hi, 60)
    fig.add_trace(
        go.Scatter(
            x=grid,
            y=1 - 0.99**grid,
            mode="lines",
            line=dict(dash="dash", color=PHANTOM),
            name="chance: 1 − 0.99^N",
            hovertemplate="N=%{x:.0f}: chance %{y:.0%}<extra></extra>",
        ),
        1,
        1,
    )
    for col, key in ((1, "share_top1_above_p99"), (2, "median_top1_ratio")):
        fig.add_trace(
            go.Scatter(
                x=Ns,
                y=[r[key] for r in rows],
                text=[f"N={n}" for n in Ns],
                customdata=hover,
                mode="markers+text",
                textposition="middle right",
                marker=dict(size=12, color=ENSEMBLE),
                name="runs of the recipe",
                showlegend=col == 1,
                hovertemplate="%{customdata}<br>%{y:.2f}<extra></extra>",
            ),
            1,
            col,
        )
        fig.update_xaxes(title_text="training images N", type="log",
                         range=[np.log10(lo), np.log10(hi)], row=1, col=col)
    fig.add_hline(y=1, line_dash="dash", line_color=PHANTOM, row=1, col=2)
    fig.update_yaxes(range=[-0.05, 1.05], tickformat=".0%", row=1, col=1)
    return _layout(
        fig,
        "Attributability vs training-set size<br><sup>the same recipe at each N; above the "
        "dashed line (left) the top-1 beats the phantoms more often than chance alone</sup>",
        legend=dict(orientation="h", x=0, y=-0.3),
        margin=dict(l=50, r=20, t=100, b=90),
        height=420,
    )


RULE_COLOR = {"mean": MEMBER, "mixture": ENSEMBLE}


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
