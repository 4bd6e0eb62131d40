"""Command line: python -m tda {train,configure,info,sample,counterfactual,attribute,candidate,evaluate} ...

Every command reads a run directory and writes safetensors. Errors a user can cause
print one line (`error: ...`) and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from . import TdaError
from .config import DataConfig, EnsembleConfig, ModelConfig, RunConfig, SampleConfig, TrainConfig
from .sampling import COMBINE_RULES


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except TdaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; re-run the same command to resume",
              file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tda", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train an encoded ensemble into a run directory")
    t.add_argument("--dataset", default="mnist", help="mnist | fashion-mnist | digits | folder:PATH")
    t.add_argument("--n", type=int, required=True, help="number of training images N")
    t.add_argument("--members", type=int, default=16, help="ensemble size n (bits per code)")
    t.add_argument("--weight", type=int, default=None, help="code weight h (default n/2)")
    t.add_argument("--image-size", type=int, default=16)
    t.add_argument("--channels", type=int, default=1, choices=(1, 3))
    t.add_argument("--steps", type=int, default=2000, help="training steps per member")
    t.add_argument("--init", default="shared", choices=("shared", "independent", "pretrained"),
                   help="pretrained: members start from one base model trained on the "
                        "dataset's images outside the training set (--pretrain-steps)")
    t.add_argument("--pretrain-steps", type=int, default=0,
                   help="init=pretrained: training steps of the base model")
    t.add_argument("--pretrain-batch-size", type=int, default=64)
    t.add_argument("--replay", type=float, default=0.0,
                   help="share of each member batch filled with held-out images (0 to <1)")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--lr-schedule", default="constant", choices=("constant", "cosine"),
                   help="cosine: decay to 0 over the steps (helps members memorise)")
    t.add_argument("--channels-per-block", default="16,32,32",
                   help="UNet block_out_channels, comma separated")
    t.add_argument("--attention", action="store_true", help="attention in the lowest block")
    t.add_argument("--sample-steps", type=int, default=50, help="default inference steps")
    t.add_argument("--combine", default="mean", choices=COMBINE_RULES,
                   help="the run's default combination rule (mean: the paper's average of "
                   "noise predictions; mixture: members weighted by how well each explains "
                   "the trajectory)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--workers", type=int, default=None, help="parallel processes (default: cores)")
    t.add_argument("--stop-after", type=int, default=None,
                   help="train at most this many more steps per member in this call")
    t.add_argument("--device", default="cpu",
                   help="cpu or cuda (the random stream stays on the CPU: resumes anywhere)")
    _backend_args(t)
    t.add_argument("--gpus-per-member", type=float, default=0.0,
                   help="--backend ray with --device cuda: share of a GPU per member, e.g. "
                   "0.25 trains four members on each GPU (default 1)")
    t.add_argument("--out", required=True, type=Path)
    t.set_defaults(func=cmd_train)

    cf = sub.add_parser("configure", help="change a finished run's sampling defaults or "
                        "store its weights in half precision")
    cf.add_argument("--run", required=True, type=Path, help="run directory")
    cf.add_argument("--combine", default=None, choices=COMBINE_RULES,
                    help="the run's default combination rule")
    cf.add_argument("--half", action="store_true",
                    help="store member weights in float16 (half the size; chains run on "
                    "exactly the stored values); re-run precompute and evaluate after")
    cf.set_defaults(func=cmd_configure)

    i = sub.add_parser("info", help="validate a run and print its summary")
    _run_arg(i)
    i.set_defaults(func=cmd_info)

    s = sub.add_parser("sample", help="sample the full ensemble with recorded noise")
    _run_arg(s)
    _seed_steps(s)
    s.add_argument("--out", required=True, type=Path)
    s.set_defaults(func=cmd_sample)

    c = sub.add_parser("counterfactual", help="exact counterfactual with the same noise")
    _run_arg(c)
    _seed_steps(c)
    g = c.add_mutually_exclusive_group(required=True)
    g.add_argument("--exclude-members", help="members to switch off, e.g. 0,3,7")
    g.add_argument("--remove-train", help="training rows to remove, e.g. 12 or 12,40")
    c.add_argument("--out", required=True, type=Path)
    c.set_defaults(func=cmd_counterfactual)

    from .attribution import METHODS
    from .scores import SCORES

    at = sub.add_parser("attribute", help="score every training image for one sample")
    _run_arg(at)
    _seed_steps(at)
    at.add_argument("--method", default=None, choices=METHODS,
                    help="default: the method the run's report measured best for its rule "
                    "(else screened)")
    at.add_argument("--score", default=None, choices=SCORES,
                    help="the score that ranks (default: resemblance; nearest: nearness)")
    at.add_argument("--top-k", type=int, default=None, help="also write the top-k counterfactuals")
    at.add_argument("--verify", type=int, default=None, metavar="M",
                    help="re-check the best M candidates with exact chains and re-rank")
    at.add_argument("--phantoms", type=int, default=None,
                    help="phantom codes for the noise floor (default: N, at most 512)")
    _backend_args(at)
    at.add_argument("--out", required=True, type=Path)
    at.set_defaults(func=cmd_attribute)

    ca = sub.add_parser("candidate", help="is this sample attributable? the candidate-first "
                        "test: ablate its nearest training image vs random ones")
    _run_arg(ca)
    ca.add_argument("--seed", default="0", help="seed(s) of the recorded noise: 3, 1,2,5 or 0-199")
    ca.add_argument("--steps", type=int, default=None, help="inference steps (default: the run's)")
    ca.add_argument("--controls", type=int, default=16, help="random training images ablated")
    ca.add_argument("--phantoms", type=int, default=0, help="phantom codes ablated as well")
    _backend_args(ca)
    ca.add_argument("--out", type=Path, default=None, help="write the tests as JSON")
    ca.set_defaults(func=cmd_candidate)

    pc = sub.add_parser("precompute", help="featured seeds: precompute the app's first views "
                        "into RUN/featured/ (instant for every visitor)")
    _run_arg(pc)
    pc.add_argument("--seeds", default="0,1,2,3", help="featured seeds: 0,1,2,3 or 0-3")
    pc.add_argument("--exact", default="auto", choices=("auto", "yes", "no"),
                    help="also exact scores (one chain per image); auto: when N <= 1,024")
    pc.set_defaults(func=cmd_precompute)

    from .evaluate import PARTS

    ev = sub.add_parser("evaluate", help="evaluation report: FD in a classifier's features, "
                        "convergence, agreement with exact, noise floor (resumable)")
    _run_arg(ev)
    ev.add_argument("--out", type=Path, default=None, help="report folder (default: RUN/report)")
    ev.add_argument("--samples", type=int, default=512, help="samples per weight vector")
    ev.add_argument("--seeds", type=int, default=64,
                    help="held-out seeds scored exactly and by every method (the run's rule)")
    ev.add_argument("--other-rule-seeds", type=int, default=16,
                    help="the same under the other combination rule")
    ev.add_argument("--draws", type=int, default=3, help="random draws per sub-ensemble size")
    ev.add_argument("--sizes", default="1,2,4,8,12", help="sub-ensemble sizes (n is added)")
    ev.add_argument("--compare-runs", default="", help="other run folders, comma separated")
    ev.add_argument("--classifier-steps", type=int, default=1500,
                    help="training steps of the run's classifier if it has none yet")
    ev.add_argument("--classifier-outside", type=int, default=0, metavar="N",
                    help="fit that classifier on the digits outside the first N of the draw "
                    "(default: the run's N); draws are nested, so a ladder's largest N gives "
                    "all its rungs one classifier")
    ev.add_argument("--tar-samples", type=int, default=200,
                    help="samples (held-out seeds) in the candidate test, per rule")
    ev.add_argument("--tar-controls", type=int, default=16,
                    help="random training images ablated per sample in the candidate test")
    ev.add_argument("--tar-rules", default="", help="combination rules the candidate test runs "
                    "now, comma separated (default: all; the others as saved)")
    ev.add_argument("--parts", default=",".join(PARTS),
                    help="parts to compute now, comma separated (the rest as saved)")
    _backend_args(ev)
    ev.set_defaults(func=cmd_evaluate)
    return p


def _run_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, type=Path, help="run directory")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--combine", default=None, choices=COMBINE_RULES,
                   help="how each step combines the members (default: the run's)")


def _backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="local", choices=("local", "ray"),
                   help="where the work runs: local processes, or tasks on a Ray cluster")
    p.add_argument("--ray-address", default=None,
                   help="the Ray cluster (default: $RAY_ADDRESS, else a local Ray for this call)")
    p.add_argument("--ray-shared-path", action="store_true",
                   help="the run directory has the same path on every Ray node (a shared file "
                   "system): tasks read and write it there instead of sending bytes")


def _executor(a: argparse.Namespace):
    """The executor of --backend (closed after the command: a Ray started for it stops)."""
    from .executor import open_executor

    return open_executor(a.backend, a.ray_address, getattr(a, "workers", None),
                         a.ray_shared_path)


def _explorer(a: argparse.Namespace):
    from .api import Explorer

    return Explorer(a.run, device=a.device, combine=a.combine)


def _seed_steps(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="seed of the recorded noise")
    p.add_argument("--steps", type=int, default=None, help="inference steps (default: the run's)")


def _int_list(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise TdaError(f"{what} must be comma-separated integers, got {text!r}") from e


def _save(tensors: dict[str, torch.Tensor], out: Path) -> None:
    """Write safetensors to `out`, creating its folder; a failure is a one-line error."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out))
    except Exception as e:  # OSError or safetensors' own error type
        raise TdaError(f"cannot write {out}: {e}") from e


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM raises KeyboardInterrupt in the main thread, so cleanup (terminating worker
    processes) runs as for Ctrl-C; the default handler would leave the workers orphaned."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def cmd_train(a: argparse.Namespace) -> int:
    from .train import train_run

    h = a.weight if a.weight is not None else a.members // 2
    config = RunConfig(
        data=DataConfig(a.dataset, a.n, a.image_size, a.channels, a.seed),
        model=ModelConfig(tuple(_int_list(a.channels_per_block, "--channels-per-block")),
                          attention=a.attention),
        ensemble=EnsembleConfig(a.members, h, a.seed),
        train=TrainConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                          lr_schedule=a.lr_schedule, init=a.init, seed=a.seed,
                          pretrain_steps=a.pretrain_steps,
                          pretrain_batch_size=a.pretrain_batch_size, replay=a.replay),
        sample=SampleConfig(num_inference_steps=a.sample_steps, combine=a.combine),
    )
    t0 = time.time()
    # `kill` stops worker processes (or Ray tasks) too, checkpoints kept; after the
    # executor, whose ray.init installs a SIGTERM handler of its own
    with _executor(a) as executor, _sigterm_interrupts():
        done = train_run(a.out, config, stop_after=a.stop_after, device=a.device,
                         executor=executor, gpus_per_member=a.gpus_per_member)
    state = "finished" if done else "paused (re-run the same command to continue)"
    print(f"{a.out}: training {state} after {time.time() - t0:.1f} s")
    return 0


def cmd_configure(a: argparse.Namespace) -> int:
    from .train import set_sampling_defaults, store_half

    if a.combine is None and not a.half:
        raise TdaError("configure: say what to change (--combine RULE and/or --half)")
    if a.combine is not None:
        config = set_sampling_defaults(a.run, combine=a.combine)
        print(f"{a.run}: default combination rule is now {config.sample.combine}")
    if a.half:
        saved = store_half(a.run)
        print(f"{a.run}: member weights stored in float16 ({saved / 2**20:.1f} MB saved); "
              "samples move by the rounding: re-run precompute and evaluate"
              if saved else f"{a.run}: member weights were already float16")
    return 0


def _seeds(text: str) -> list[int]:
    """'3', '1,2,5' or '0-199' -> seeds."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        lo, _, hi = part.partition("-")
        try:
            out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
        except ValueError as e:
            raise TdaError(f"--seed must be integers or ranges like 0-199, got {text!r}") from e
    if not out:
        raise TdaError("--seed needs at least one seed")
    return out


def cmd_candidate(a: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .candidate import candidate_tests, tar

    ex = _explorer(a)
    seeds = _seeds(a.seed)
    t0 = time.time()
    with tqdm(total=len(seeds), desc=f"candidate test ({ex.combine})", unit="sample",
              dynamic_ncols=True, disable=len(seeds) == 1) as bar:

        def progress(done: int, total: int) -> None:
            bar.n = done
            bar.refresh()

        with _executor(a) as executor:
            tests = candidate_tests(ex, seeds, a.steps, a.controls, a.phantoms, progress,
                                    executor=executor)
    seconds = time.time() - t0
    for t in tests[:20]:
        print(f"seed {t.seed}: nearest training image {t.candidate} "
              f"(distance {t.candidate_distance:.2f}); ablating it "
              f"{'changes' if t.changed else 'does not change'} the nearest image; "
              f"{t.flip_rate:.0%} of {len(t.control_rows)} random ablations do; "
              f"p = {t.p_value:.3g}: {t.verdict}")
    summary = tar(tests) if len(tests) > 1 else None
    if summary:
        print(f"TAR {summary['tar']:.2f} (95% interval {summary['tar_low']:.2f}-"
              f"{summary['tar_high']:.2f}) over {len(tests)} samples; P(change | candidate) "
              f"{summary['p_change_candidate']:.2f}, P(change | random) "
              f"{summary['p_change_random']:.2f}")
    print(f"{len(tests)} samples in {seconds:.1f} s ({seconds / len(tests):.2f} s per sample)")
    if a.out:
        try:
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps({"run": str(a.run), "combine": ex.combine, "tar": summary,
                                         "seconds": seconds,
                                         "tests": [t.summary() for t in tests]}, indent=2))
        except OSError as e:
            raise TdaError(f"cannot write {a.out}: {e}") from e
    return 0


def cmd_precompute(a: argparse.Namespace) -> int:
    from .featured import precompute

    ex = _explorer(a)
    seeds = _seeds(a.seeds)
    t0 = time.time()
    exact = {"auto": None, "yes": True, "no": False}[a.exact]
    path = precompute(ex, seeds, exact, progress=lambda text: print(text, flush=True))
    print(f"{path}: seeds {', '.join(map(str, seeds))} ({ex.combine}) in "
          f"{time.time() - t0:.0f} s")
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from .ensemble import load_run

    run = load_run(a.run)
    print(json.dumps(run.summary(), indent=2))
    return 0


def cmd_sample(a: argparse.Namespace) -> int:

    ex = _explorer(a)
    t0 = time.time()
    s = ex.sample(a.seed, a.steps)
    _save({"sample": s.sample, "x_T": s.noise.x_T, "noise": s.noise.noise,
           "timesteps": s.noise.timesteps.to(torch.int64)}, a.out)
    print(f"{a.out}: sample of seed {a.seed} in {time.time() - t0:.2f} s")
    return 0


def cmd_counterfactual(a: argparse.Namespace) -> int:

    ex = _explorer(a)
    t0 = time.time()
    if a.exclude_members is not None:
        off = _int_list(a.exclude_members, "--exclude-members")
        cf = ex.counterfactual(a.seed, exclude_members=off, steps=a.steps)
    else:
        rows = _int_list(a.remove_train, "--remove-train")
        cf = ex.counterfactual(a.seed, remove_rows=rows, steps=a.steps)
    _save({"sample": cf.sample, "counterfactual": cf.counterfactual,
           "weights": cf.weights.float(),
           "excluded_train": torch.from_numpy(np.asarray(cf.excluded, dtype=np.int64))},
          a.out)
    print(f"{a.out}: {len(cf.excluded)} training images unseen by the active members; "
          f"residual norm {float((cf.counterfactual - cf.sample).norm()):.4f}; "
          f"{time.time() - t0:.2f} s")
    return 0


def cmd_attribute(a: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .attribution import attribute, counterfactuals_for, verify_topk
    from .scores import DEFAULT_SCORE

    ex = _explorer(a)
    if a.top_k is not None and not 1 <= a.top_k <= ex.run.N:
        raise TdaError(f"--top-k must be between 1 and N={ex.run.N}")
    if a.verify is not None and not 1 <= a.verify <= ex.run.N:
        raise TdaError(f"--verify must be between 1 and N={ex.run.N}")
    with tqdm(total=1, desc=a.method, unit="step", dynamic_ncols=True) as bar:

        def progress(done: int, total: int) -> None:
            bar.total, bar.n = total, done
            bar.refresh()

        with _executor(a) as executor:
            att = attribute(ex, a.seed, a.method, a.steps, n_phantoms=a.phantoms,
                            progress=progress, executor=executor, score=a.score or DEFAULT_SCORE)
            if a.verify:
                att = verify_topk(ex, att, a.verify, progress=progress, executor=executor)
    if a.score is not None and a.score not in att.scores_by:
        raise TdaError(f"method {att.method} has no score {a.score!r}")
    out = {"scores": torch.from_numpy(att.scores), "order": torch.from_numpy(att.order),
           "sample": att.sample, "null_scores": torch.from_numpy(att.null_scores),
           "pvalues": torch.from_numpy(att.pvalues), "qvalues": torch.from_numpy(att.qvalues)}
    for name, v in att.scores_by.items():
        out[f"score_{name}"] = torch.from_numpy(v.copy())
    if a.top_k:
        top = att.top(a.top_k)
        exact = att.exact or bool(a.verify) or att.method in ("nearest", "screened")
        out["topk_index"] = torch.from_numpy(top)
        out["topk_counterfactual"] = counterfactuals_for(ex, att, top, exact=exact).contiguous()
    _save(out, a.out)
    s = att.attributability
    print(f"{a.out}: {att.method} ({att.score}) over N={ex.run.N} in {att.seconds:.1f} s; top-1 row "
          f"{att.order[0]} (p={att.pvalues[att.order[0]]:.3g}); top-1 / phantom p99 = "
          f"{s['top1_ratio']:.2f}; {s['n_above']} images above p99 (chance {s['expected_above']:.1f})")
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .evaluate import REPORT, EvalSizes, evaluate

    sizes = EvalSizes(
        samples=a.samples, seeds=a.seeds, other_rule_seeds=a.other_rule_seeds, draws=a.draws,
        sizes=tuple(_int_list(a.sizes, "--sizes")), classifier_steps=a.classifier_steps,
        classifier_outside=a.classifier_outside,
        tar_samples=a.tar_samples, tar_controls=a.tar_controls,
        tar_rules=tuple(r.strip() for r in a.tar_rules.split(",") if r.strip()),
        parts=tuple(p.strip() for p in a.parts.split(",") if p.strip()))
    out = a.out or a.run / "report"
    bars: dict[str, tqdm] = {}

    def progress(what: str, done: float, total: int) -> None:
        if what not in bars:
            bars[what] = tqdm(total=total, desc=what, dynamic_ncols=True,
                              bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}")
        bars[what].total, bars[what].n = total, done
        bars[what].refresh()
        if done >= total:
            bars[what].close()

    t0 = time.time()
    try:
        with _executor(a) as executor:
            report = evaluate(a.run, out, sizes, [p for p in a.compare_runs.split(",") if p],
                              device=a.device, progress=progress, executor=executor)
    finally:
        for bar in bars.values():
            bar.close()
    print(f"{out / REPORT}: {time.time() - t0:.0f} s"
          f"{'' if report['complete'] else ' (partial: rerun with the other --parts)'}")
    for rule, t in report.get("candidate", {}).get("rules", {}).items():
        print(f"  candidate test ({rule}): TAR {t['tar']:.2f} ({t['tar_low']:.2f}-"
              f"{t['tar_high']:.2f}) over {t['samples']} samples; random ablations change the "
              f"sample {t['p_change_random']:.0%} of the time")
    if "fidelity" in report:
        f = report["fidelity"]
        print(f"  FD in a classifier's features (not Inception FID): ensemble "
              f"{f['fd_ensemble']:.3g}, members median {np.median(f['fd_members']):.3g}")
    if "attribution" in report:
        for rule, r in report["attribution"]["rules"].items():
            best = r["default_method"]
            fig = r["methods"][best]["scores"]["resemblance"]
            print(f"  {rule}: default method {best}, top-1 agrees with exact on "
                  f"{fig['top1_agreement']:.0%} of {len(r['seeds'])} held-out seeds")
    return 0
