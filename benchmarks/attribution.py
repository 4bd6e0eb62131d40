"""Attribution benchmark: speed and agreement of every method on one run.

    python benchmarks/attribution.py --run DIR [--seeds 8] [--floor-runs A,B] [--json OUT]

Prints medians and ratios (these machines are noisy; compare ratios from one run):
raw member throughput per chunk size; exact-sweep chain throughput / the raw limit;
seconds per method and the exact / jacobian ratio; growth with N (subsets of codes);
the naive sweep (one counterfactual sampling per image, as the paper's scripts do)
on a subset vs our batched sweep; Spearman, Pearson and top-10 overlap of each method
with exact, per seed and median; how often the verified top-10 (M = --verify) equals
the exact top-10; real vs phantom scores for each run in --floor-runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import ks_2samp, pearsonr, spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tda.sampling  # noqa: E402
from tda.api import Explorer  # noqa: E402
from tda.attribution import attribute, exact_counterfactuals, jacobian, verify_topk  # noqa: E402
from tda.encoding import without_codes  # noqa: E402

APPROX = ("jacobian", "last-step", "individual", "individual-paper", "nearest")


def med(xs) -> float:
    return float(statistics.median(xs))


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


@torch.inference_mode()
def raw_throughput(ex: Explorer, chunks=(16, 32, 64, 128, 256), repeats=5) -> dict[int, float]:
    """Member evaluations per second of one member's batched forward, per chunk size."""
    m = ex.run.members[0]
    t = ex.chain().timesteps[len(ex.chain().timesteps) // 2]
    out = {}
    for c in chunks:
        x = torch.randn(c, *ex.run.image_shape)
        m(x, t)
        times = [timed(lambda x=x: m(x, t))[1] for _ in range(repeats)]
        out[c] = c / med(times)
    return out


def raw_pair_throughput(ex: Explorer, chunks=(64, 128, 256), repeats=5) -> dict[int, float]:
    """Evaluations per second of two members' forwards side by side, one thread each (the
    way `sample_chains` shares member calls on a CPU with several threads)."""
    pool = tda.sampling._cpu_pool()
    if pool is None:
        return {}
    ms = ex.run.members[:2]
    t = ex.chain().timesteps[len(ex.chain().timesteps) // 2]
    out = {}
    for c in chunks:
        x = torch.randn(c, *ex.run.image_shape)

        def both(x=x):
            with torch.inference_mode():
                return list(pool.map(lambda m: m(x, t), ms))

        both()
        out[c] = 2 * c / med([timed(both)[1] for _ in range(repeats)])
    return out


@contextlib.contextmanager
def previous_defaults(ex: Explorer):
    """The sampler as it was before the thread pool: one member call at a time, chunk 64."""
    chunk, pool = ex.chunk, tda.sampling._cpu_pool
    ex.chunk, tda.sampling._cpu_pool = 64, lambda: None
    try:
        yield
    finally:
        ex.chunk, tda.sampling._cpu_pool = chunk, pool


def topk_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    return len(set(np.argsort(-a)[:k]) & set(np.argsort(-b)[:k])) / k


def speed(ex: Explorer, seed: int, naive_subset: int) -> dict:
    codes = ex.run.codes
    N, K = len(codes), ex.steps(None)
    ex.sample(seed)
    raw = raw_throughput(ex)
    best_chunk = max(raw, key=raw.get)
    pair = raw_pair_throughput(ex)
    best_raw = max([raw[best_chunk], *pair.values()])
    _, t_sweep = timed(lambda: exact_counterfactuals(ex, seed, None, codes))
    evals = float((without_codes(codes) != 0).sum()) * K
    growth = {}
    for frac in (0.25, 0.5):
        m = max(1, int(N * frac))
        growth[m] = timed(lambda m=m: exact_counterfactuals(ex, seed, None, codes[:m]))[1]
    growth[N] = t_sweep
    _, t_jac = timed(lambda: attribute(ex, seed, "jacobian", n_phantoms=0))
    quarter = codes[: max(1, N // 4)]
    with previous_defaults(ex):  # the same machine, the same moment: a fair before/after
        _, t_sweep_before = timed(lambda: exact_counterfactuals(ex, seed, None, quarter))
        _, t_jac_before = timed(lambda: jacobian(ex, seed, central=True))
    _, t_sweep_quarter = timed(lambda: exact_counterfactuals(ex, seed, None, quarter))
    rows = list(range(min(naive_subset, N)))
    _, t_naive = timed(lambda: [ex.y(without_codes(codes[[r]]), seed) for r in rows])
    naive_full = t_naive / len(rows) * N
    return {
        "N": N,
        "n": ex.n,
        "steps": K,
        "raw_evals_per_s": {str(k): round(v) for k, v in raw.items()},
        "best_chunk": best_chunk,
        "sweep_seconds": t_sweep,
        "sweep_evals_per_s": evals / t_sweep,
        "raw_pair_evals_per_s": {str(k): round(v) for k, v in pair.items()},
        "throughput_vs_raw": evals / t_sweep / raw[best_chunk],
        "throughput_vs_best_raw": evals / t_sweep / best_raw,
        "before_sweep_quarter_seconds": t_sweep_before,
        "after_sweep_quarter_seconds": t_sweep_quarter,
        "before_jacobian_central_seconds": t_jac_before,
        "sweep_growth_seconds": {str(k): v for k, v in sorted(growth.items())},
        "jacobian_seconds": t_jac,
        "exact_over_jacobian": t_sweep / t_jac,
        "naive_seconds_per_image": t_naive / len(rows),
        "naive_extrapolated_seconds": naive_full,
        "naive_over_batched": naive_full / t_sweep,
    }


def agreement(ex: Explorer, seeds: list[int], verify_m: int, methods=APPROX) -> dict:
    if "jacobian" not in methods:
        raise SystemExit("agreement needs jacobian among --methods (it screens the verified top-k)")
    per_seed, secs = [], {m: [] for m in ("exact", *methods, "verify")}
    for seed in seeds:
        ex_att = attribute(ex, seed, "exact")
        secs["exact"].append(ex_att.seconds)
        row = {
            "seed": seed,
            "attributability": ex_att.attributability,
            "median_real": float(np.median(ex_att.scores)),
            "median_phantom": float(np.median(ex_att.null_scores)),
        }
        for m in methods:
            a = attribute(ex, seed, m)
            secs[m].append(a.seconds)
            row[m] = {
                "spearman": float(spearmanr(a.scores, ex_att.scores)[0]),
                "pearson": float(pearsonr(a.scores, ex_att.scores)[0]),
                "top10": topk_overlap(a.scores, ex_att.scores),
            }
            if m == "jacobian":
                v = verify_topk(ex, a, m=verify_m)
                secs["verify"].append(v.seconds)
                row["verified_top10_equal"] = bool(list(v.order[:10]) == list(ex_att.order[:10]))
                # the M a verified top-10 needs on this seed: the jacobian rank of the
                # worst-placed exact top-10 image, plus one
                rank = np.empty(len(a.order), dtype=np.int64)
                rank[a.order] = np.arange(len(a.order))
                row["m_needed"] = int(rank[ex_att.order[:10]].max()) + 1
        per_seed.append(row)
        print(
            f"  seed {seed}: " + ", ".join(f"{m} rho={row[m]['spearman']:.2f}" for m in methods)
            + f"; verified top-10 equal: {row['verified_top10_equal']}, M needed {row['m_needed']}",
            flush=True,
        )
    summary = {
        m: {k: med([r[m][k] for r in per_seed]) for k in ("spearman", "pearson", "top10")}
        for m in methods
    }
    return {
        "per_seed": per_seed,
        "median": summary,
        "verified_top10_equal_share": float(np.mean([r["verified_top10_equal"] for r in per_seed])),
        "m_needed": [r["m_needed"] for r in per_seed],
        "median_seconds": {m: med(v) for m, v in secs.items() if v},
    }


VISIBLE_RMS = 0.1  # RMS change (model space [-1, 1]) that a person sees at a glance


def noise_floor(run_dir: str, seeds: list[int], gallery: Path | None = None, **explorer) -> dict:
    """Exact scores of real images vs phantom codes; top-1 above p99 and visibly different."""
    ex = Explorer(run_dir, **explorer)
    real, null, above, ratio, rms, tiles = [], [], [], [], [], []
    for seed in seeds:
        a = attribute(ex, seed, "exact")
        real.append(a.scores)
        null.append(a.null_scores)
        s = a.attributability
        above.append(s["n_above"])
        ratio.append(s["top1_ratio"])
        top = int(a.order[0])
        res = a.state["residuals"][top]
        rms.append(float(res.pow(2).mean().sqrt()))
        tiles.append(
            [
                a.sample,
                torch.from_numpy(ex.run.images[top]).float() / 127.5 - 1,
                a.sample + res,
                res,
            ]
        )
        print(
            f"  {run_dir} seed {seed}: top-1 row {top}, top-1/p99 {s['top1_ratio']:.2f}, "
            f"RMS change {rms[-1]:.3f}",
            flush=True,
        )
    if gallery is not None:
        _save_gallery(tiles, gallery)
    cfg = ex.run.config
    good = (np.asarray(ratio) > 1) & (np.asarray(rms) >= VISIBLE_RMS)
    return {
        "run": run_dir,
        "init": cfg.train.init,
        "N": ex.run.N,
        "n_seeds": len(seeds),
        "n_phantoms": len(null[0]),
        "median_real": float(np.median(np.concatenate(real))),
        "median_phantom": float(np.median(np.concatenate(null))),
        "median_above_p99": med(above),
        "chance_above_p99": 0.01 * ex.run.N,
        # if real scores were phantom-like, the largest of N would pass p99 this often
        "chance_top1_above_p99": 1 - 0.99 ** ex.run.N,
        "ks_pvalue": float(ks_2samp(np.concatenate(real), np.concatenate(null)).pvalue),
        "median_top1_ratio": med(ratio),
        "share_seeds_top1_above_p99": float(np.mean(np.asarray(ratio) > 1)),
        "median_top1_rms_change": med(rms),
        "share_seeds_above_p99_and_visible": float(np.mean(good)),
    }


def _save_gallery(tiles: list[list[torch.Tensor]], path: Path, scale: int = 6) -> None:
    """One row per seed: sample, top-1 training image, counterfactual, residual (red +, blue -)."""
    from PIL import Image

    rows = []
    for row in tiles:
        cells = []
        for k, t in enumerate(row):
            g = t.mean(0).clamp(-1, 1).numpy()
            if k == 3:
                v = np.abs(g) / max(1e-6, float(np.abs(g).max()))
                rgb = np.stack([1 - v * (g < 0), 1 - v, 1 - v * (g > 0)], -1)
            else:
                rgb = np.repeat(((g + 1) / 2)[..., None], 3, -1)
            cells.append(np.pad(rgb, ((1, 1), (1, 1), (0, 0)), constant_values=1))
        rows.append(np.concatenate(cells, 1))
    grid = (np.concatenate(rows, 0) * 255).astype(np.uint8)
    img = Image.fromarray(grid).resize(
        (grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST
    )
    img.save(path)


def print_report(r: dict) -> None:
    if "speed" in r:
        print_speed(r["speed"])
    print_quality(r)


def print_speed(s: dict) -> None:
    print("\n## Speed (N={N}, n={n}, {steps} steps)".format(**s))
    print("| chunk | raw member evals/s |\n|---|---|")
    for c, v in s["raw_evals_per_s"].items():
        print(f"| {c} | {v} |")
    print(
        f"\nexact sweep: {s['sweep_seconds']:.1f} s, {s['sweep_evals_per_s']:.0f} evals/s = "
        f"{100 * s['throughput_vs_raw']:.0f}% of the raw limit (chunk {s['best_chunk']})"
    )
    if s.get("raw_pair_evals_per_s"):
        print("two member calls side by side, one thread each: " + ", ".join(
            f"chunk {c}: {v}" for c, v in s["raw_pair_evals_per_s"].items()) + " evals/s; "
            f"sweep = {100 * s['throughput_vs_best_raw']:.0f}% of the best raw figure")
    if "before_sweep_quarter_seconds" in s:
        b, a = s["before_sweep_quarter_seconds"], s["after_sweep_quarter_seconds"]
        bj = s["before_jacobian_central_seconds"]
        print(f"before (one call at a time, chunk 64, central differences) vs now, same run: "
              f"sweep of N/4 {b:.1f} s vs {a:.1f} s ({b / a:.2f}x); jacobian {bj:.2f} s vs "
              f"{s['jacobian_seconds']:.2f} s ({bj / s['jacobian_seconds']:.2f}x)")
    print(
        "growth with N (exact sweep seconds): "
        + ", ".join(f"N={k}: {v:.1f}" for k, v in s["sweep_growth_seconds"].items())
    )
    print(
        f"jacobian (all N, no phantoms): {s['jacobian_seconds']:.2f} s; "
        f"exact / jacobian = {s['exact_over_jacobian']:.1f}x"
    )
    print(
        f"naive sweep: {s['naive_seconds_per_image']:.3f} s per image -> "
        f"{s['naive_extrapolated_seconds']:.0f} s for N; naive / batched = "
        f"{s['naive_over_batched']:.1f}x"
    )


def print_quality(r: dict) -> None:
    if "agreement" in r:
        a = r["agreement"]
        print("\n## Agreement with exact (median over seeds)")
        print("| method | Spearman | Pearson | top-10 overlap | median s |\n|---|---|---|---|---|")
        for m, v in a["median"].items():
            print(
                f"| {m} | {v['spearman']:.3f} | {v['pearson']:.3f} | {v['top10']:.2f} | "
                f"{a['median_seconds'].get(m, float('nan')):.2f} |"
            )
        print(f"| exact | 1 | 1 | 1 | {a['median_seconds']['exact']:.2f} |")
        print(
            f"\nverified top-10 (jacobian, M={r['verify_m']}) equal to exact top-10 on "
            f"{100 * a['verified_top10_equal_share']:.0f}% of seeds; median "
            f"{a['median_seconds']['verify']:.1f} s"
        )
        if "m_needed" in a:
            need = sorted(a["m_needed"])
            print(f"M that a verified top-10 needs, per seed (sorted): {need}")
        ps = a["per_seed"]
        print(
            "noise floor on these seeds: median real {:.3f}, median phantom {:.3f}, top-1 > p99 "
            "on {:.0f}% of seeds, images above p99 {:.0f} (median; chance {:.1f})".format(
                med([x["median_real"] for x in ps]),
                med([x["median_phantom"] for x in ps]),
                100 * np.mean([x["attributability"]["top1_ratio"] > 1 for x in ps]),
                med([x["attributability"]["n_above"] for x in ps]),
                ps[0]["attributability"]["expected_above"],
            )
        )
    if r.get("floor"):
        print("\n## Real vs phantom (exact)")
        print(
            "| run | init | N | median real | median phantom | above p99 (median) | chance |"
            " top-1/p99 (median) | seeds top-1 > p99 | by chance | and visible (RMS >= 0.1) |"
            " KS p real vs phantom |"
            "\n|---|---|---|---|---|---|---|---|---|---|---|---|"
        )
        for f in r["floor"]:
            print(
                f"| {f['run']} | {f['init']} | {f['N']} | {f['median_real']:.3f} | "
                f"{f['median_phantom']:.3f} | {f['median_above_p99']:.0f} | "
                f"{f['chance_above_p99']:.1f} | {f['median_top1_ratio']:.2f} | "
                f"{100 * f['share_seeds_top1_above_p99']:.0f}% | "
                f"{100 * f.get('chance_top1_above_p99', float('nan')):.0f}% | "
                f"{100 * f['share_seeds_above_p99_and_visible']:.0f}% | "
                f"{f.get('ks_pvalue', float('nan')):.2g} |"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--seeds", type=int, default=8, help="seeds for agreement (drawn with --seed)")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--verify", type=int, default=64, help="M of the verified top-k")
    p.add_argument("--naive-subset", type=int, default=32)
    p.add_argument("--floor-runs", default="", help="comma-separated runs for real vs phantom")
    p.add_argument("--floor-seeds", type=int, default=8)
    p.add_argument("--skip-agreement", action="store_true")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument(
        "--gallery",
        type=Path,
        default=None,
        help="PNG per floor run: sample, top-1 image, counterfactual, residual",
    )
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--methods", default=",".join(APPROX),
                   help="approximations compared with exact (nearest needs faiss)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (agreement and floor only)")
    p.add_argument("--chunk", type=int, default=None, help="chains per member call")
    a = p.parse_args()
    if a.device != "cpu" and not a.skip_speed:
        p.error("speed figures are for the CPU machine: add --skip-speed with --device")
    explorer = {"device": a.device, **({"chunk": a.chunk} if a.chunk else {})}
    torch.set_num_threads(max(1, torch.get_num_threads()))
    seeds = [int(s) for s in np.random.default_rng(a.seed).integers(0, 2**31 - 1, a.seeds)]
    ex = Explorer(a.run, **explorer)
    report = {
        "run": a.run,
        "seeds": seeds,
        "verify_m": a.verify,
        "torch_threads": torch.get_num_threads(),
        "device": a.device,
    }
    if not a.skip_speed:
        print("speed ...", flush=True)
        report["speed"] = speed(ex, seeds[0], a.naive_subset)
    if not a.skip_agreement:
        print("agreement ...", flush=True)
        report["agreement"] = agreement(ex, seeds, a.verify, a.methods.split(","))
    floor_seeds = [
        int(s) for s in np.random.default_rng(a.seed + 1).integers(0, 2**31 - 1, a.floor_seeds)
    ]
    report["floor"] = [
        noise_floor(r, floor_seeds, a.gallery and a.gallery.with_name(f"{a.gallery.stem}_{k}.png"),
                    **explorer)
        for k, r in enumerate(x for x in a.floor_runs.split(",") if x)
    ]
    print_report(report)
    if a.json:
        a.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
