"""What the candidate test and the mixture rule cost on a run (medians of repeats).

    python benchmarks/candidate_cost.py --run assets/default --repeats 5

Prints seconds per sample for the candidate test under each rule, and the time of one
chain and of a batch of chains under `mean` and `mixture` with their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tda.api import Explorer  # noqa: E402
from tda.candidate import candidate_test  # noqa: E402
from tda.encoding import u0, without_rows  # noqa: E402
from tda.sampling import COMBINE_RULES  # noqa: E402


def timed(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="assets/default")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--controls", type=int, default=16)
    p.add_argument("--batch", type=int, default=17, help="chains in the batched timing")
    a = p.parse_args()
    torch.set_num_threads(2)
    base = Explorer(a.run)
    n, N = base.n, base.run.N
    V = torch.cat([u0(n)[None], without_rows(base.run.codes, [0]).expand(a.batch - 1, -1)])
    print(f"{a.run}: N = {N}, n = {n}, h = {base.run.h}, torch threads 2, "
          f"median of {a.repeats}")
    rows = {}
    for rule in COMBINE_RULES:
        ex = base.with_combine(rule)
        one = timed(lambda ex=ex: ex.y(u0(n), 0), a.repeats)
        batch = timed(lambda ex=ex: ex.y(V, 0), a.repeats)
        seeds = iter(range(200_000, 200_000 + a.repeats))
        cand = timed(lambda ex=ex, s=seeds: candidate_test(ex, next(s), controls=a.controls),
                     a.repeats)
        rows[rule] = (one, batch, cand)
        print(f"{rule:8s} one chain {one:.2f} s · {a.batch} chains {batch:.2f} s · "
              f"candidate test ({a.controls} controls, sample included) {cand:.2f} s per sample")
    r = [rows["mixture"][i] / rows["mean"][i] for i in range(3)]
    print(f"mixture / mean: one chain {r[0]:.2f}x · batch {r[1]:.2f}x · candidate test {r[2]:.2f}x")


if __name__ == "__main__":
    main()
