"""The ladder: runs of one recipe at growing N, and where samples stop being attributable.

A rung is any run; its facts come from its manifest and its evaluation report
(`RUN/report/report.json`), never from loading its members, so the ladder of every run
a server has costs a few small JSON reads. Runs share a *recipe* when everything but
the number of training images N is the same (members n, weight h, model, training,
rule); each recipe is one curve of TAR against N, drawn beside Dai & Gifford's MNIST
curve (`tda.candidate.PAPER_TAR`). A member of ours sees N·h/n images, one of theirs N/2.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from PIL import Image, ImageDraw

from .candidate import PAPER_CHANGE, PAPER_TAR
from .config import RunConfig
from .ensemble import MANIFEST

PAPER_MEMBERS = 22  # their MNIST ensembles: 22 UNets, each trained on half the images
PAPER_NAME = "Dai & Gifford (MNIST, 22 GPU-trained UNets)"
COLORS = ("#2166ac", "#d6604d", "#1b7837", "#762a83", "#e08214")


def recipe(config: RunConfig) -> str:
    """A short name of what a run is made with, N left out."""
    e, t = config.ensemble, config.train
    return (f"n={e.n_members}, h={e.weight}, {t.steps:,} steps x {t.batch_size}, "
            f"{t.init} init{', replay' if t.replay else ''}, {config.sample.combine}")


def _report(path: Path) -> dict:
    f = path / "report" / "report.json"
    try:
        return json.loads(f.read_text()) if f.is_file() else {}
    except (OSError, ValueError):
        return {}


def rung(label: str, path: str | Path) -> dict | None:
    """One run's facts: N, n, h, images per member, recipe and (if its report has them)
    TAR with its interval under the run's rule, change rates, copy share, FD; None if the
    folder holds no readable run."""
    path = Path(path)
    try:
        m = json.loads((path / MANIFEST).read_text())
        config, N, n, h = RunConfig.from_dict(m["config"]), int(m["N"]), int(m["n"]), int(m["h"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    out = {"label": label, "path": str(path), "N": N, "n": n, "h": h,
           "per_member": N * h / n, "recipe": recipe(config),
           "rule": config.sample.combine, "tar": None}
    report = _report(path)
    by_rule = (report.get("candidate") or {}).get("rules", {})
    cand = by_rule.get(out["rule"])
    out["other_rules"] = {rule: {k: c[k] for k in ("tar", "tar_low", "tar_high", "samples")}
                          for rule, c in sorted(by_rule.items()) if rule != out["rule"]}
    if cand:
        out |= {"tar": cand["tar"], "tar_low": cand["tar_low"], "tar_high": cand["tar_high"],
                "samples": cand["samples"], "p_change_candidate": cand["p_change_candidate"],
                "p_change_random": cand["p_change_random"], "copies": cand["share_copies"],
                "median_distance": cand["median_candidate_distance"]}
    fid = report.get("fidelity") or {}
    out["fd"] = fid.get("fd_ensemble")
    return out


def rungs(runs: dict[str, str]) -> list[dict]:
    """Every readable run of {label: path}, by N (then label)."""
    found = [r for label, path in runs.items() if (r := rung(label, path)) is not None]
    return sorted(found, key=lambda r: (r["N"], r["label"]))


def recipes(rows: list[dict]) -> dict[str, list[dict]]:
    """Rungs grouped by recipe, the recipe with the most rungs first."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["recipe"], []).append(r)
    return dict(sorted(groups.items(), key=lambda kv: -len(kv[1])))


def tar_curve(rows: list[dict], current: str | None = None) -> go.Figure:
    """TAR against N: one line per recipe (95% intervals as error bars; the current run
    ringed) and the paper's MNIST curve, N on a log scale."""
    fig = go.Figure()
    paper = sorted(PAPER_TAR.items())
    fig.add_trace(go.Scatter(
        x=[N for N, _ in paper], y=[t for _, t in paper], name=PAPER_NAME,
        mode="lines+markers", line=dict(color="#8c8c8c", dash="dash"),
        hovertemplate="paper: N = %{x:,}<br>TAR %{y:.2f}<extra></extra>"))
    for color, (name, group) in zip(COLORS * 4, recipes(rows).items(), strict=False):
        have = [r for r in group if r["tar"] is not None]
        if not have:
            continue
        fig.add_trace(go.Scatter(
            x=[r["N"] for r in have], y=[r["tar"] for r in have], name=f"ours: {name}",
            mode="lines+markers", line=dict(color=color), marker=dict(size=10),
            error_y=dict(type="data", symmetric=False,
                         array=[r["tar_high"] - r["tar"] for r in have],
                         arrayminus=[r["tar"] - r["tar_low"] for r in have]),
            customdata=[[r["label"], r["per_member"], r["copies"], r["samples"]] for r in have],
            hovertemplate=("%{customdata[0]}: N = %{x:,}<br>TAR %{y:.2f} on %{customdata[3]} "
                           "samples<br>%{customdata[1]:.0f} images per member<br>copies "
                           "%{customdata[2]:.0%}<extra></extra>")))
        ring = [r for r in have if r["label"] == current]
        if ring:
            fig.add_trace(go.Scatter(
                x=[ring[0]["N"]], y=[ring[0]["tar"]], mode="markers", showlegend=False,
                marker=dict(size=20, color="rgba(0,0,0,0)", line=dict(color=color, width=2)),
                hoverinfo="skip"))
    ticks = sorted({N for N, _ in paper} | {r["N"] for r in rows})
    fig.update_layout(
        xaxis=dict(type="log", title="training images N", tickvals=ticks,
                   ticktext=[f"{N:,}" for N in ticks]),
        yaxis=dict(title="TAR (candidate-first test)", range=[-0.05, 1.08]),
        legend=dict(orientation="h", y=-0.25), height=380, margin=dict(l=10, r=10, t=10, b=10))
    return fig


def tar_picture(rows: list[dict], current: str | None = None,
                size: tuple[int, int] = (760, 330)) -> Image.Image:
    """`tar_curve` as a plain picture (`tda.pictures`: drawn at once, no JavaScript): the
    paper's curve grey and dashed, each recipe's in its colour with 95% intervals, the
    current run ringed, a legend below."""
    from .pictures import INK, PAPER, _rgb, font

    W, H = size
    groups = [(c, name, [r for r in g if r["tar"] is not None])
              for c, (name, g) in zip(COLORS * 4, recipes(rows).items(), strict=False)]
    groups = [g for g in groups if g[2]]
    legend = [("#8c8c8c", PAPER_NAME)] + [(c, f"ours: {name}") for c, name, _ in groups]
    left, right, top, bottom = 58, W - 20, 14, H - 46 - 16 * len(legend)
    Ns = [N for N in PAPER_TAR] + [r["N"] for _, _, g in groups for r in g]
    lo, hi = np.log2(min(Ns)) - 0.3, np.log2(max(Ns)) + 0.3
    im = Image.new("RGB", (W, H), PAPER)
    d = ImageDraw.Draw(im)

    def xy(N: float, t: float) -> tuple[float, float]:
        return (left + (np.log2(N) - lo) / (hi - lo) * (right - left),
                bottom - (t + 0.05) / 1.13 * (bottom - top))

    grid = (235, 235, 235)
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = xy(1, t)[1]
        d.line([(left, y), (right, y)], fill=grid)
        d.text((left - 6, y), f"{t:.2f}", fill=INK, font=font(), anchor="rm")
    for N in sorted(set(Ns)):
        x = xy(N, 0)[0]
        d.line([(x, top), (x, bottom)], fill=grid)
        d.text((x, bottom + 4), f"{N:,}", fill=INK, font=font(), anchor="mt")
    d.text(((left + right) / 2, bottom + 20), "training images N (log scale)", fill=INK,
           font=font(), anchor="mt")
    d.text((4, top - 6), "TAR", fill=INK, font=font(), anchor="lt")
    paper = [xy(N, t) for N, t in sorted(PAPER_TAR.items())]
    for a, b in zip(paper, paper[1:], strict=False):  # dashed
        for k in range(0, 20, 2):
            d.line([_lerp(a, b, k / 20), _lerp(a, b, (k + 1) / 20)], fill=(140, 140, 140), width=2)
    for p in paper:
        d.ellipse([p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3], fill=(140, 140, 140))
    for color, _, g in groups:
        rgb = tuple(int(v) for v in _rgb(color))
        pts = [xy(r["N"], r["tar"]) for r in g]
        if len(pts) > 1:
            d.line(pts, fill=rgb, width=3)
        for r, (x, y) in zip(g, pts, strict=True):
            y0, y1 = xy(1, r["tar_low"])[1], xy(1, r["tar_high"])[1]
            d.line([(x, y0), (x, y1)], fill=rgb, width=2)
            d.line([(x - 5, y0), (x + 5, y0)], fill=rgb, width=2)
            d.line([(x - 5, y1), (x + 5, y1)], fill=rgb, width=2)
            d.ellipse([x - 6, y - 6, x + 6, y + 6], fill=rgb)
            if r["label"] == current:
                d.ellipse([x - 11, y - 11, x + 11, y + 11], outline=rgb, width=2)
    for i, (color, text) in enumerate(legend):
        y = bottom + 40 + 16 * i
        d.line([(left, y), (left + 24, y)], fill=tuple(int(v) for v in _rgb(color)), width=3)
        d.text((left + 30, y), text, fill=INK, font=font(), anchor="lm")
    return im


def _lerp(a, b, f: float) -> tuple[float, float]:
    return a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f


def paper_cell(N: int) -> str:
    """The paper's MNIST TAR at N and its x-hat / random change rates, or a dash."""
    if N not in PAPER_TAR:
        return "—"
    cand, rand = PAPER_CHANGE[N]
    return f"{PAPER_TAR[N]:.2f} ({cand:.0%} / {rand:.0%})"


def table(rows: list[dict]) -> list[dict]:
    """The rungs as table rows, with the paper's TAR at the same N where it has one."""
    out = []
    for r in rows:
        t = r["tar"]
        out.append({
            "run": r["label"], "N": f"{r['N']:,}", "n / h": f"{r['n']} / {r['h']}",
            "images per member": f"{r['per_member']:.0f} (paper: {r['N'] // 2:,})",
            "TAR": "not measured" if t is None
            else f"{t:.2f} ({r['tar_low']:.2f}–{r['tar_high']:.2f}), {r['samples']} samples, "
            f"{r['rule']}",
            "other rule": "; ".join(
                f"{c['tar']:.2f} ({c['tar_low']:.2f}–{c['tar_high']:.2f}), {c['samples']} "
                f"samples, {rule}" for rule, c in r["other_rules"].items()) or "—",
            "paper": paper_cell(r["N"]),
            "x̂ / random change": "—" if t is None
            else f"{r['p_change_candidate']:.0%} / {r['p_change_random']:.0%}",
            "copies": "—" if t is None else f"{r['copies']:.0%}",
            "median nearest L2": "—" if t is None else f"{r['median_distance']:.2f}",
            "FD": "—" if r["fd"] is None else f"{r['fd']:.1f}",
        })
    return out
