"""Pictures and charts for the explorer, with no Streamlit in them.

Images: model-space tensors ([-1, 1]) or uint8 arrays [C, H, W] become PIL images
scaled up by a whole factor with NEAREST, so every pixel stays a sharp square;
residuals become a diverging map (red = brighter without the image, blue = darker,
white = unchanged) on a symmetric scale. Charts are plotly figures: the code
matrix, real vs phantom score histograms, a scatter of two score sets, and the
member diagram of one counterfactual.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from PIL import Image

from .index import nearest_row  # noqa: F401 - the pages' nearest training row
from .scores import MEANING as SCORE_MEANING  # noqa: F401 - what each score means
from .scores import SCORES  # noqa: F401

# RdBu reversed (ColorBrewer): blue for negative, white at zero, red for positive.
_DIVERGING = np.array(
    [
        [5, 48, 97],
        [33, 102, 172],
        [67, 147, 195],
        [146, 197, 222],
        [209, 229, 240],
        [247, 247, 247],
        [253, 219, 199],
        [244, 165, 130],
        [214, 96, 77],
        [178, 24, 43],
        [103, 0, 31],
    ],
    dtype=np.float32,
)
REAL_COLOR = "#d6604d"
PHANTOM_COLOR = "#8c8c8c"
ON_COLOR = "#2166ac"
OFF_COLOR = "#e0e0e0"


def _numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def to_uint8(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """[C, H, W] uint8, or float in [-1, 1] -> uint8 [H, W] (grey) or [H, W, 3]."""
    a = _numpy(x)
    if a.ndim != 3:
        raise ValueError(f"expected an image [C, H, W], got shape {a.shape}")
    if a.dtype != np.uint8:
        a = ((np.clip(a.astype(np.float32), -1.0, 1.0) + 1.0) * 127.5).round().astype(np.uint8)
    return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)


def upscale(im: Image.Image, size: int) -> Image.Image:
    """Scale up by the largest whole factor that fits `size` (at least 1), NEAREST."""
    f = max(1, size // max(im.size))
    return im.resize((im.width * f, im.height * f), Image.Resampling.NEAREST)


def to_image(x: torch.Tensor | np.ndarray, size: int = 256) -> Image.Image:
    """One image [C, H, W] (uint8 or [-1, 1]) as a crisp PIL image about `size` px wide."""
    return upscale(Image.fromarray(to_uint8(x)), size)


def to_images(xs: torch.Tensor | np.ndarray | Sequence, size: int = 128) -> list[Image.Image]:
    return [to_image(x, size) for x in xs]


def diverging(values: np.ndarray, vmax: float) -> np.ndarray:
    """Values -> uint8 RGB [..., 3] on a symmetric diverging map over [-vmax, vmax]."""
    t = (np.clip(values / max(vmax, 1e-12), -1.0, 1.0) + 1.0) / 2.0 * (len(_DIVERGING) - 1)
    lo = np.floor(t).astype(np.int64).clip(0, len(_DIVERGING) - 2)
    w = (t - lo)[..., None]
    rgb = _DIVERGING[lo] * (1 - w) + _DIVERGING[lo + 1] * w
    return rgb.round().astype(np.uint8)


def residual_scale(residuals: torch.Tensor | np.ndarray) -> float:
    """The symmetric scale that shows every given residual without clipping."""
    return float(np.abs(_numpy(residuals)).max(initial=0.0)) or 1.0


def residual_image(
    r: torch.Tensor | np.ndarray, size: int = 256, vmax: float | None = None
) -> Image.Image:
    """A residual [C, H, W] (counterfactual - sample) as a diverging colour image.

    Colour channels are averaged; the scale is symmetric around zero (`vmax`, by
    default the largest |value|), so white always means "unchanged".
    """
    a = _numpy(r).astype(np.float32)
    if a.ndim != 3:
        raise ValueError(f"expected a residual [C, H, W], got shape {a.shape}")
    a = a.mean(0)
    vmax = residual_scale(a) if vmax is None else vmax
    return upscale(Image.fromarray(diverging(a, vmax)), size)


def bits(code: np.ndarray) -> str:
    """A code row as a bit string, member 0 first: '101001'."""
    return "".join(str(int(b)) for b in np.asarray(code))


def members_of(code: np.ndarray) -> list[int]:
    return [int(i) for i in np.flatnonzero(np.asarray(code))]


def code_matrix_figure(codes: np.ndarray, labels: np.ndarray) -> go.Figure:
    """Heatmap of the code matrix: training images across, members down."""
    codes = np.asarray(codes)
    N, n = codes.shape
    hover = [
        [
            f"image #{j} (label {int(labels[j])})<br>member {i}: "
            f"{'trained on it' if codes[j, i] else 'never saw it'}"
            for j in range(N)
        ]
        for i in range(n)
    ]
    fig = go.Figure(
        go.Heatmap(
            z=codes.T,
            x=np.arange(N),
            y=np.arange(n),
            text=hover,
            hoverinfo="text",
            colorscale=[[0, OFF_COLOR], [1, ON_COLOR]],
            zmin=0,
            zmax=1,
            showscale=False,
            xgap=1 if N <= 128 else 0,
            ygap=1,
        )
    )
    fig.update_layout(
        height=min(520, 140 + 22 * n),
        margin=dict(l=10, r=10, t=40, b=10),
        title=f"Code matrix: blue = member trained on the image ({N} images x {n} members)",
        xaxis_title="training image #",
        yaxis_title="member",
    )
    fig.update_yaxes(autorange="reversed", dtick=1 if n <= 16 else None)
    return fig


def counterfactual_diagram(code: np.ndarray, row: int) -> go.Figure:
    """Members' weights in the full ensemble vs the ensemble without training image `row`."""
    code = np.asarray(code).astype(bool)
    n = len(code)
    keep = (~code).sum()
    weights = np.stack([np.full(n, 1.0 / n), np.where(code, 0.0, 1.0 / keep)])
    text = [[f"1/{n}"] * n, ["off" if c else f"1/{keep}" for c in code]]
    fig = go.Figure(
        go.Heatmap(
            z=weights,
            x=[f"m{i}" for i in range(n)],
            y=["full ensemble", f"without image #{row}"],
            text=text,
            texttemplate="%{text}",
            textfont=dict(size=12),
            hoverinfo="skip",
            showscale=False,
            colorscale=[[0, OFF_COLOR], [1, ON_COLOR]],
            zmin=0,
            zmax=weights.max(),
            xgap=3,
            ygap=6,
        )
    )
    fig.update_layout(
        height=200,
        margin=dict(l=10, r=10, t=40, b=10),
        title=f"Member weights: image #{row} has code {bits(code)}, so its {int(code.sum())} "
        "members switch off",
    )
    fig.update_yaxes(autorange="reversed")
    return fig


def score_histogram(real: np.ndarray, phantom: np.ndarray, method: str) -> go.Figure:
    """Overlaid histograms of real scores and phantom (noise-floor) scores."""
    both = np.concatenate([np.asarray(real, float), np.asarray(phantom, float)])
    lo, hi = float(both.min()), float(both.max())
    nbins = int(np.clip(np.sqrt(len(both)), 8, 40))
    bins = dict(start=lo, end=hi + 1e-9, size=max(hi - lo, 1e-9) / nbins)  # shared by both
    fig = go.Figure()
    fig.add_histogram(
        x=np.asarray(real),
        xbins=bins,
        name=f"training images ({len(real)})",
        marker_color=REAL_COLOR,
        opacity=0.65,
        histnorm="probability density",
    )
    if len(phantom):
        fig.add_histogram(
            x=np.asarray(phantom),
            xbins=bins,
            name=f"phantom codes ({len(phantom)})",
            marker_color=PHANTOM_COLOR,
            opacity=0.65,
            histnorm="probability density",
        )
        p99 = float(np.quantile(phantom, 0.99))
        fig.add_vline(
            x=p99,
            line_dash="dash",
            line_color="#444",
            annotation_text="phantom p99",
            annotation_position="top",
        )
    fig.update_layout(
        barmode="overlay",
        height=340,
        margin=dict(l=10, r=10, t=40, b=10),
        title=f"Scores ({method}): real vs phantom",
        xaxis_title="influence score",
        yaxis_title="density",
        legend=dict(orientation="h", y=-0.25),
    )
    return fig


def distances_to(image, sample, counterfactual) -> tuple[float, float]:
    """Pixel L2 ([0, 1]) from a training image to the sample and to its counterfactual."""
    from .scores import pixels

    x, y = pixels(np.asarray(image)[None]), pixels(torch.as_tensor(np.asarray(sample))[None])
    c = pixels(torch.as_tensor(np.asarray(counterfactual))[None])
    return float((y - x).norm()), float((c - x).norm())


def methods_table(rule: dict) -> list[dict]:
    """One row per method and score of a rule's agreement summary (`agreement.summarise`)."""
    pct = lambda x: "n/a" if x is None else f"{x:.0%}"  # noqa: E731
    rows = []
    for m, d in rule["methods"].items():
        for s, f in d["scores"].items():
            rows.append({
                "method": m, "score": s, "top-1 agrees": pct(f["top1_agreement"]),
                "copies: top-1 is the copy": pct(f["copy_top1"]),
                "copies: median rank": f["copy_rank_median"],
                "copies: clear runner-up": pct(f["copy_runner_up_clear"]),
                "Spearman": f["spearman_median"], "top-10 overlap": f["top10_median"],
                "top-1 not nearest": pct(f["top1_not_nearest"]),
                "seconds": d["seconds_median"], "verdict": "fails" if f["fails"] else "passes",
            })
    return rows


def compare_scores(scores: np.ndarray, exact: np.ndarray, k: int) -> dict:
    """Spearman rho over the rows both score, and the top-k overlap (rows, best first)."""
    from .metrics import spearman

    ok = np.isfinite(scores) & np.isfinite(exact)
    rho = spearman(scores[ok], exact[ok]) if ok.sum() > 2 else float("nan")
    top = lambda s: set(np.argsort(-np.where(np.isfinite(s), s, -np.inf), kind="stable")[:k])  # noqa: E731
    return {"rho": float(rho), "overlap": len(top(scores) & top(exact))}


def scatter_figure(
    x: np.ndarray,
    y: np.ndarray,
    xlabel: str,
    ylabel: str,
    title: str,
    highlight: Sequence[int] = (),
) -> go.Figure:
    """Scatter of two score vectors over the same training images, identity line dashed."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    hi = np.zeros(len(x), dtype=bool)
    hi[list(highlight)] = True
    fig = go.Figure()
    for mask, name, color in (
        (~hi, "other images", PHANTOM_COLOR),
        (hi, "shown top-k", REAL_COLOR),
    ):
        rows = np.flatnonzero(mask)
        fig.add_scatter(
            x=x[rows],
            y=y[rows],
            mode="markers",
            name=name,
            marker_color=color,
            text=[f"image #{j}" for j in rows],
            hoverinfo="text+x+y",
        )
    lo, up = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    fig.add_scatter(
        x=[lo, up], y=[lo, up], mode="lines", name="y = x", line=dict(dash="dash", color="#999")
    )
    fig.update_layout(
        height=340,
        margin=dict(l=10, r=10, t=40, b=10),
        title=title,
        xaxis_title=xlabel,
        yaxis_title=ylabel,
        legend=dict(orientation="h", y=-0.25),
    )
    return fig


def floor_finding(run_dir) -> tuple[str, str] | None:
    """("ok" | "partly" | "weak", sentence): do this run's attributions rise above the floor?

    Read from the run's evaluation report (report/report.json, section noise_floor) or,
    failing that, from floor.json written by benchmarks/attribution.py. None when neither
    exists. If real scores were phantom-like, the largest of N would pass the phantoms'
    99th percentile with probability 1 - 0.99^N (47% at N = 64); a one-sided binomial test
    says whether the seeds where the top-1 passes beat that. "ok": it passes on at least
    3 of 4 seeds and beats chance (p <= 0.05). "partly": not that, but real scores are
    measurably larger than phantom scores (that test, or a Kolmogorov-Smirnov p <= 0.05
    with the real median above the phantom one). "weak": neither.
    """
    import json
    from pathlib import Path

    from scipy.stats import binomtest

    run_dir = Path(run_dir)
    f: dict | None = None
    report = run_dir / "report" / "report.json"
    if report.is_file():
        att = json.loads(report.read_text()).get("attribution") or {}
        nf = att.get("noise_floor") or {}
        if "phantom_median" in nf:
            f = {
                "share": nf["share_top1_above_p99"],
                "ratio": nf["median_top1_ratio"],
                "real": nf["real_median"],
                "phantom": nf["phantom_median"],
                "seeds": len(nf["per_seed"]),
                "N": att["N"],
                "ks_p": nf.get("ks_pvalue"),
            }
    if f is None and (run_dir / "floor.json").is_file():
        fl = json.loads((run_dir / "floor.json").read_text())["floor"][0]
        f = {
            "share": fl["share_seeds_top1_above_p99"],
            "ratio": fl["median_top1_ratio"],
            "real": fl["median_real"],
            "phantom": fl["median_phantom"],
            "seeds": fl["n_seeds"],
            "N": fl["N"],
            "ks_p": fl.get("ks_pvalue"),
        }
    if f is None:
        return None
    chance = 1 - 0.99 ** f["N"]
    hits = round(f["share"] * f["seeds"])
    p = binomtest(hits, f["seeds"], chance, alternative="greater").pvalue
    ks = f["ks_p"] is not None and f["ks_p"] <= 0.05 and f["real"] > f["phantom"]
    level = "ok" if f["share"] >= 0.75 and p <= 0.05 else "partly" if p <= 0.05 or ks else "weak"
    text = (
        f"Measured on this run over {f['seeds']} seeds: the top-1 image beats the phantoms' "
        f"99th percentile on {hits} of {f['seeds']} seeds (chance alone: "
        f"{100 * chance:.0f}% of seeds; binomial p = {p:.2g}); median top-1 / p99 = "
        f"{f['ratio']:.2f}; median exact score of real images {f['real']:.3f} vs phantom "
        f"codes {f['phantom']:.3f}"
        + (f" (Kolmogorov-Smirnov p = {f['ks_p']:.2g})." if f["ks_p"] is not None else ".")
    )
    text += {
        "ok": " The sample's most influential images rise above member noise: removing one "
        "of them changes the sample more than switching to a random other half of the "
        "members does. Lower-ranked images are mostly at the noise floor; read each score "
        "with its p-value.",
        "partly": " Real images move the sample measurably more than phantom codes do, so "
        "the scores carry signal, but on many seeds the top-1 is still within member noise. "
        "Trust an image only where its p-value says it beats the phantoms.",
        "weak": " That is no better than member noise: at this scale, switching to any other "
        "half of the members changes the sample about as much as removing an image, so a "
        "top-k here is mostly member noise. Read every score with its p-value.",
    }[level]
    return level, text


TAR_BAR = 0.85  # the paper's MNIST TAR at N = 1,024 (22 GPU-trained UNets)


def paper_tar(N: int) -> tuple[int, float] | None:
    """The paper's MNIST TAR at the nearest N it reports (N, TAR), or None below 256."""
    from .candidate import PAPER_TAR

    if N < min(PAPER_TAR):
        return None
    near = min(PAPER_TAR, key=lambda k: abs(np.log(k / N)))
    return near, PAPER_TAR[near]


def tar_finding(run_dir) -> dict | None:
    """The candidate test of a run's evaluation report, per rule, with a verdict.

    {"level": "ok" | "partly" | "weak", "text": sentence, "rows": [{rule, tar, low, high,
    random, copies, samples}], "paper": (N, TAR) | None, "default_rule": rule}. "ok":
    TAR >= 0.85 under the run's default rule with the lower end of its 95% interval above
    0.7; "partly": the interval is above 0; "weak": otherwise. None without a report.
    """
    import json
    from pathlib import Path

    report = Path(run_dir) / "report" / "report.json"
    if not report.is_file():
        return None
    r = json.loads(report.read_text())
    cand = r.get("candidate")
    if not cand or not cand.get("rules"):
        return None
    rows = [{"rule": rule, "tar": t["tar"], "low": t["tar_low"], "high": t["tar_high"],
             "candidate": t["p_change_candidate"], "random": t["p_change_random"],
             "copies": t["share_copies"], "samples": t["samples"]}
            for rule, t in cand["rules"].items()]
    best = next(x for x in rows if x["rule"] == cand["default_rule"])
    level = ("ok" if best["tar"] >= TAR_BAR and best["low"] > 0.7
             else "partly" if best["low"] > 0 else "weak")
    N = r["run"]["N"]
    paper = paper_tar(N)
    text = (
        f"Candidate test on {best['samples']} samples of held-out seeds ({best['rule']} rule): "
        f"ablating a sample's nearest training image changes it in "
        f"{best['candidate']:.0%} of samples, ablating a random training image in "
        f"{best['random']:.0%}: TAR = {best['tar']:.2f} (95% interval {best['low']:.2f}–"
        f"{best['high']:.2f})"
        + (f"; the paper reports {paper[1]:.2f} on MNIST at N = {paper[0]:,}." if paper else ".")
    )
    text += {
        "ok": " Samples here are attributable: each follows the training image it is "
        "nearest to, and removing that image (and only that image) changes it.",
        "partly": " Some samples are attributable, many are not: read each sample's own "
        "flip rate on the Attribution page.",
        "weak": " Ablating the nearest training image matters about as much as ablating a "
        "random one: this run's members generalise rather than know their own images.",
    }[level]
    return {"level": level, "text": text, "rows": rows, "paper": paper,
            "default_rule": cand["default_rule"]}


def candidate_figure(test) -> go.Figure:
    """How far each ablation moved the sample: the candidate vs the random controls (and
    phantoms), marked by whether the sample's nearest training image changed."""
    fig = go.Figure()
    groups = [("random training image", test.control_effects, test.control_nearest, "#888"),
              ("phantom code", test.phantom_effects, test.phantom_nearest, "#b39ddb")]
    for name, eff, near, color in groups:
        if len(eff) == 0:
            continue
        flipped = np.asarray(near) != test.candidate
        for mask, suffix, symbol in ((flipped, ", nearest image changed", "x"),
                                     (~flipped, ", unchanged", "circle-open")):
            if mask.any():
                fig.add_scatter(x=np.asarray(eff)[mask], y=[name] * int(mask.sum()), mode="markers",
                                name=name + suffix, marker=dict(color=color, symbol=symbol, size=10))
    fig.add_scatter(x=[test.effect], y=["nearest image x̂"], mode="markers",
                    name="x̂" + (", nearest image changed" if test.changed else ", unchanged"),
                    marker=dict(color="#d62728", size=14, symbol="x" if test.changed else "circle-open"))
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=36, b=10),
                      title="How far each ablation moves the sample (L2, model space)",
                      xaxis_title="distance of the ablated sample from the sample",
                      legend=dict(orientation="h", y=-0.4))
    return fig


def mixture_weights_figure(loglik: torch.Tensor | np.ndarray, timesteps: np.ndarray,
                           saw: np.ndarray | None = None) -> go.Figure:
    """Heatmap of the mixture's member weights at every step (softmax of the running
    log-likelihoods l [K, n]); `saw` marks the members trained on an image of interest."""
    ll = torch.as_tensor(_numpy(loglik), dtype=torch.float64)
    w = torch.softmax(ll, dim=1).numpy()
    n = w.shape[1]
    names = [f"m{i}" + (" ★" if saw is not None and saw[i] else "") for i in range(n)]
    fig = go.Figure(go.Heatmap(
        z=w.T, x=np.arange(1, len(w) + 1), y=names, colorscale="Blues", zmin=0, zmax=1,
        colorbar=dict(title="weight"),
        hovertemplate="step %{x}<br>%{y}<br>weight %{z:.2f}<extra></extra>",
    ))
    fig.update_layout(height=120 + 18 * n, margin=dict(l=10, r=10, t=40, b=10),
                      title="Which members the sample followed (mixture weights per step)",
                      xaxis_title=f"step (t = {int(timesteps[0])} → {int(timesteps[-1])})",
                      yaxis=dict(autorange="reversed"))
    return fig
