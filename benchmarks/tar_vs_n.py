"""TAR vs N: the candidate-first test on ideal memorisers and on trained runs, both rules.

Ideal memorisers (`tda.ideal`: each member is the exact optimal denoiser of its own
images) show what members that know their own images give at any N; trained runs
show where ours stand. Printed as a markdown table beside Dai & Gifford's MNIST
figures (22 GPU-trained UNets, h = 11, 32x32).

    python benchmarks/tar_vs_n.py --ideal 256,1024,4096 --runs assets/default,runs/x --samples 200
    python benchmarks/tar_vs_n.py --reports assets   # the ladder, from the runs' saved reports

`--reports ROOT` recomputes nothing: every run below ROOT is a rung (`tda.ladder`), its
row read from its report (`python -m tda evaluate`), printed against N and against
images per member (ours N·h/n, the paper's N/2) beside the paper's MNIST row.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from diffusers import DDPMScheduler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tda.api import Explorer  # noqa: E402
from tda.candidate import PAPER_TAR, candidate_tests, tar  # noqa: E402
from tda.config import DataConfig, EnsembleConfig, RunConfig  # noqa: E402
from tda.data import load_images, to_model_space  # noqa: E402
from tda.encoding import make_codes  # noqa: E402
from tda.ensemble import Run  # noqa: E402
from tda.ideal import ideal_members  # noqa: E402
from tda.index import build_index  # noqa: E402
from tda.sampling import COMBINE_RULES  # noqa: E402

SEED0 = 100_000  # the held-out seeds evaluate uses too


def ideal_explorer(N: int, n: int, h: int) -> tuple[Explorer, object]:
    config = RunConfig(data=DataConfig("mnist", N, 16, 1, 0), ensemble=EnsembleConfig(n, h, 0))
    images, labels = load_images(config.data)
    codes = make_codes(N, n, h, 0)
    sched = DDPMScheduler(num_train_timesteps=1000)
    members = ideal_members(to_model_space(images), codes, sched.alphas_cumprod)
    run = Run(Path(f"ideal-N{N}"), config, codes, images, labels, sched, members)
    return Explorer(run, chunk=4096), build_index(images)


def row(label: str, ex: Explorer, index, samples: int, controls: int) -> dict:
    out = {"run": label, "N": ex.run.N, "n": ex.n, "h": ex.run.h, "rules": {}}
    for rule in COMBINE_RULES:
        t0 = time.perf_counter()
        tests = candidate_tests(ex.with_combine(rule), range(SEED0, SEED0 + samples),
                                controls=controls, index=index)
        out["rules"][rule] = {**tar(tests), "seconds_per_sample": (time.perf_counter() - t0) / samples}
    return out


def fmt(r: dict) -> str:
    cells = []
    for rule in COMBINE_RULES:
        t = r["rules"][rule]
        cells.append(f"{t['tar']:.2f} ({t['tar_low']:.2f}–{t['tar_high']:.2f}) · "
                     f"{t['p_change_random']:.0%} · {t['share_copies']:.0%}")
    paper = PAPER_TAR.get(r["N"])
    return (f"| {r['run']} | {r['N']} | {r['n']}/{r['h']} | " + " | ".join(cells)
            + f" | {'—' if paper is None else f'{paper:.2f}'} |")


def ladder_table(root: Path) -> list[str]:
    """The rungs below `root`, from their saved reports, as markdown lines."""
    from tda.ensemble import MANIFEST
    from tda.ladder import rungs, table

    found = sorted(m.parent for m in root.rglob(MANIFEST) if "checkpoints" not in m.parts)
    rows = table(rungs({p.relative_to(root).as_posix(): str(p) for p in found}))
    if not rows:
        return ["no run below " + str(root)]
    return ["| " + " | ".join(rows[0]) + " |", "|---" * len(rows[0]) + "|",
            *("| " + " | ".join(r.values()) + " |" for r in rows)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ideal", default="256,1024,4096", help="N of ideal-memoriser ensembles")
    p.add_argument("--ideal-members", type=int, default=16)
    p.add_argument("--ideal-weight", type=int, default=4)
    p.add_argument("--runs", default="", help="trained run folders, comma separated")
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--controls", type=int, default=16)
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    p.add_argument("--reports", type=Path, default=None,
                   help="print the ladder of the runs below this folder from their reports")
    a = p.parse_args()
    if a.reports is not None:
        print("\n".join(ladder_table(a.reports)))
        return
    torch.set_num_threads(2)
    print(f"candidate test, {a.samples} samples (seeds {SEED0}+), {a.controls} controls each; "
          "cells: TAR (95% interval) · random-ablation change rate · samples that copy")
    print("| run | N | n/h | TAR mean | TAR mixture | paper (MNIST) |")
    print("|---|---|---|---|---|---|")
    rows = []
    for N in [int(x) for x in a.ideal.split(",") if x]:
        ex, index = ideal_explorer(N, a.ideal_members, a.ideal_weight)
        rows.append(row("ideal memorisers", ex, index, a.samples, a.controls))
        print(fmt(rows[-1]), flush=True)
    for path in [x for x in a.runs.split(",") if x]:
        ex = Explorer(path)
        rows.append(row(path, ex, None, a.samples, a.controls))
        print(fmt(rows[-1]), flush=True)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
