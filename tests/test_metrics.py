"""Metrics (Fréchet distance, rank agreement, the classifier), the evaluation report and
the Diagnostics page, on the tiny run with tiny sizes."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import plotly.io as pio
import pytest
import torch
from conftest import tiny_config
from scipy.stats import spearmanr
from streamlit.testing.v1 import AppTest

from tda import TdaError
from tda.cli import main
from tda.config import DataConfig
from tda.data import load_images
from tda.evaluate import REPORT, EvalSizes, evaluate, sample_many, weight_rows
from tda.metrics import (
    CLASSIFIER_DIR,
    FD_NAME,
    features,
    fit_classifier,
    frechet_distance,
    load_classifier,
    pearson,
    probabilities,
    spearman,
    topk_overlap,
)

ROOT = Path(__file__).resolve().parent.parent
SIZES = EvalSizes(samples=40, seeds=2, other_rule_seeds=1, draws=2, sizes=(1, 2, 4),
                  tar_samples=4, tar_controls=3)
# two sample blocks
SECTIONS = ("run", "classifier", "candidate", "fidelity", "convergence", "attribution", "by_n", "cost_seconds")


def fd_reference(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance through the symmetric form tr(A + B - 2 (A^1/2 B A^1/2)^1/2), by eigh."""

    def psd_sqrt(m):
        w, v = np.linalg.eigh(m)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ra = psd_sqrt(ca)
    d = a.mean(0) - b.mean(0)
    return float(d @ d + np.trace(ca) + np.trace(cb) - 2 * np.trace(psd_sqrt(ra @ cb @ ra)))


def test_frechet_distance_matches_independent_computations():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    b = 0.5 + rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6))
    assert frechet_distance(a, b) == pytest.approx(fd_reference(a, b), rel=1e-6)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-6)
    # one dimension: (m1 - m2)^2 + (s1 - s2)^2
    x, y = a[:, 0], b[:, 1]
    direct = (x.mean() - y.mean()) ** 2 + (x.std(ddof=1) - y.std(ddof=1)) ** 2
    assert frechet_distance(x[:, None], y[:, None]) == pytest.approx(direct, rel=1e-6)
    with pytest.raises(TdaError):
        frechet_distance(a, b[:, :3])


def test_identical_sets_give_zero():
    f = np.random.default_rng(1).normal(size=(300, 16))
    assert abs(frechet_distance(f, f)) < 1e-6
    assert frechet_distance(f, f + 1.0) == pytest.approx(16.0, rel=1e-6)  # mean shift only


def test_rank_metrics():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=50), rng.normal(size=50)
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)
    assert pearson(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1])
    assert spearman(a, np.exp(a)) == pytest.approx(1.0)
    assert math.isnan(pearson(a, np.ones(50)))
    assert topk_overlap(a, a, 10) == 1.0
    assert topk_overlap(a, -a, 10) == 0.0
    assert topk_overlap([5, 4, 3, 2, 1], [5, 4, 0, 0, 9], 2) == 0.5


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clf") / CLASSIFIER_DIR
    fit_classifier(tiny_config().data, out, steps=150)
    return out


def test_classifier_trains_and_gives_features(classifier_dir):
    data = tiny_config().data
    clf = load_classifier(classifier_dir, data)
    assert sorted(p.name for p in classifier_dir.iterdir()) == ["config.json", "model.safetensors"]
    assert clf.accuracy > 0.6  # 10 digit classes, 8x8: chance is 0.1
    assert clf.info["n_val"] > 0 and clf.info["data"]["n_train"] == data.n_train
    images, _ = load_images(data, held_out=True)
    f = features(clf, images[:37])
    assert f.shape == (37, clf.config.feature_dim) and np.isfinite(f).all()
    p = probabilities(clf, images[:37])
    assert p.shape == (37, 10) and np.allclose(p.sum(1), 1.0)
    with pytest.raises(TdaError, match="other data"):
        load_classifier(classifier_dir, DataConfig("digits", 32, 8, 1, 0))
    with pytest.raises(TdaError, match="exists"):
        fit_classifier(data, classifier_dir)


def test_one_classifier_serves_every_smaller_nested_draw(tmp_path):
    """A ladder's classifier: fitted outside the largest draw, it never saw a rung's images
    (draws are nested), so it loads for every smaller N and for no larger one."""
    from tda.data import balanced_subset, load_raw

    _, labels = load_raw("digits")
    for small, large in ((16, 64), (64, 1000), (7, 8)):
        a, b = balanced_subset(labels, small, 0), balanced_subset(labels, large, 0)
        assert set(a) <= set(b)
    big = DataConfig("digits", n_train=64, image_size=8, channels=1, seed=0)
    out = tmp_path / CLASSIFIER_DIR
    fit_classifier(big, out, steps=5)
    seen = set(balanced_subset(labels, 64, 0))
    for n in (16, 64):
        small = replace(big, n_train=n)
        assert load_classifier(out, small).info["data"]["n_train"] == 64
        assert seen >= set(balanced_subset(labels, n, 0))
    for other in (replace(big, n_train=65), replace(big, seed=1), replace(big, image_size=16)):
        with pytest.raises(TdaError, match="other data"):
            load_classifier(out, other)


def test_evaluate_fits_the_ladder_classifier_outside_a_larger_draw(tiny_run_dir, tmp_path):
    from tda.api import Explorer
    from tda.evaluate import classifier_for

    ex = Explorer(tiny_run_dir)
    sizes = replace(SIZES, classifier_steps=5, classifier_outside=40)
    clf = classifier_for(ex, tmp_path / "clf", sizes, None)
    assert clf.info["data"]["n_train"] == 40 and clf.info["n_train"] + clf.info["n_val"] <= 1797 - 40
    with pytest.raises(TdaError, match="below the run's N"):
        classifier_for(ex, tmp_path / "clf2", replace(sizes, classifier_outside=8), None)


def test_batched_noise_matches_one_seed_at_a_time(tiny_explorer):
    V, _ = weight_rows(tiny_explorer.n, [(2, 0, (1, 4))])
    V = V[[0, 2, -1]]
    y = sample_many(tiny_explorer, V, [3, 8])
    for j, seed in enumerate([3, 8]):
        torch.testing.assert_close(y[:, j], tiny_explorer.y(V, seed), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def evaluated(tiny_run_dir, classifier_dir, tmp_path_factory) -> tuple[Path, dict]:
    """A copy of the tiny run with a report in RUN/report, another copy compared with it."""
    run, other = (tmp_path_factory.mktemp(name) / "tiny" for name in ("evaluated", "other"))
    for r in (run, other):
        shutil.copytree(tiny_run_dir, r)
        shutil.copytree(classifier_dir, r / CLASSIFIER_DIR)
    return run, evaluate(run, run / "report", SIZES, compare_runs=[other])


def numbers(obj, where="report"):
    """Every number of a JSON tree with its path; None counts as a missing number."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from numbers(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for k, v in enumerate(obj):
            yield from numbers(v, f"{where}[{k}]")
    elif obj is None or isinstance(obj, int | float):
        yield where, obj


def test_evaluate_writes_a_complete_resumable_report(evaluated, capsys):
    run, report = evaluated
    other = Path(report["by_n"][1]["path"])
    saved = json.loads((run / "report" / REPORT).read_text())
    assert saved["complete"] and saved["note"] == FD_NAME
    assert all(s in saved for s in SECTIONS)
    bad = [(w, x) for w, x in numbers(saved) if x is None or not math.isfinite(x)]
    # figures of the samples that copy an image are missing where no sample copies one
    # and rank figures of scores that are all 0 (the tiny run resembles no image)
    nocopy = any(r["copies"] == 0 for r in saved["attribution"]["rules"].values())
    assert not [(w, x) for w, x in bad if not (nocopy and ".copy_" in w) and not (
        (".spearman_median" in w or ".top10_median" in w) and ".magnitude." not in w)], bad
    f, c, a = saved["fidelity"], saved["convergence"], saved["attribution"]
    assert f["n_samples"] == 40 and len(f["fd_members"]) == 6
    assert 0 <= f["confident_ensemble"] <= 1 and f["fd_real_halves"] < f["fd_ensemble"]
    assert list(c["by_k"]) == ["1", "2", "4", "6"] and c["by_k"]["6"]["l2_mean"] == 0
    rule = a["rules"][a["default_rule"]]
    assert len(rule["seeds"]) == 2 and rule["default_method"] in rule["methods"]
    assert set(rule["methods"]) == {"screened", "exact", "jacobian", "last-step", "individual",
                                    "individual-paper"}
    exact = rule["methods"]["exact"]["scores"]["resemblance"]
    assert exact["top1_agreement"] == 1.0 and not exact["fails"]  # the reference
    assert [r["path"] for r in saved["by_n"]] == [str(run), str(other)]
    cand = saved["candidate"]
    assert cand["default_rule"] == "mean" and set(cand["rules"]) == {"mean", "mixture"}
    for t in cand["rules"].values():
        assert t["samples"] == 4 and t["tar_low"] <= t["tar"] <= t["tar_high"]
        assert len(t["per_sample"]["flip_rate"]) == 4 and t["seconds_per_sample"] > 0
    assert all(set(r["tar"]) == {"mean", "mixture"} for r in saved["by_n"])
    assert saved["cost_seconds"]["total"] > 0
    for name in saved["figures"]:
        pio.from_json((run / "report" / f"{name}.json").read_text())
        assert (run / "report" / f"{name}.html").stat().st_size > 0
    assert {"fidelity", "convergence", "methods", "tar", "flip_rates",
            "tar_by_n"} <= set(saved["figures"])
    # resumable: a rerun (through the CLI) reuses every saved part and cache file
    parts = {p: p.stat().st_mtime_ns for p in (run / "report").rglob("*.safetensors")}
    parts |= {p: p.stat().st_mtime_ns for p in (run / "report" / "parts").iterdir()}
    argv = ["evaluate", "--run", str(run), "--samples", "40", "--seeds", "2",
            "--other-rule-seeds", "1", "--draws", "2",
            "--sizes", "1,2,4", "--compare-runs", str(other), "--tar-samples", "4",
            "--tar-controls", "3"]  # fmt: skip
    assert main(argv) == 0
    assert "not Inception FID" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in parts} == parts
    again = json.loads((run / "report" / REPORT).read_text())
    assert again["attribution"] == saved["attribution"] and again["fidelity"] == saved["fidelity"]
    # an interrupted evaluation: one seed's attributions and the summary are missing
    cache = run / "report" / "cache" / "attributions"
    first, second = (cache / f"{saved['attribution']['default_rule']}_seed_{s:06d}.safetensors"
                     for s in saved["attribution"]["rules"][saved["attribution"]["default_rule"]]
                     ["seeds"])
    second.unlink()
    (run / "report" / "parts" / "attribution.json").unlink()
    evaluate(run, run / "report", SIZES, compare_runs=[other])
    assert first.stat().st_mtime_ns == parts[first] and second.is_file()
    final = json.loads((run / "report" / REPORT).read_text())
    for rule, r in final["attribution"]["rules"].items():
        figs = lambda r: {m: d["scores"] for m, d in r["methods"].items()}  # noqa: E731
        assert figs(r) == figs(saved["attribution"]["rules"][rule])


def open_diagnostics(runs: Path, tmp_path, monkeypatch) -> AppTest:
    monkeypatch.setenv("TDA_RUNS", str(runs))
    monkeypatch.setenv("TDA_ASSETS", str(tmp_path / "no-assets"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page("pages/5_diagnostics.py").run()
    assert not at.exception, at.exception
    return at


def test_diagnostics_page_shows_the_report(evaluated, tmp_path, monkeypatch):
    run, report = evaluated
    at = open_diagnostics(run.parent, tmp_path, monkeypatch)
    assert not at.info
    labels = {m.label: m.value for m in at.metric}
    assert labels["FD ensemble"] == format(report["fidelity"]["fd_ensemble"], ".3g")
    assert len(at.get("plotly_chart")) == len(report["figures"])
    assert any(FD_NAME in c.value for c in at.caption)


def test_diagnostics_page_without_report_explains_and_recomputes(
    tiny_run_dir, tmp_path, monkeypatch
):
    at = open_diagnostics(tiny_run_dir.parent, tmp_path, monkeypatch)
    assert "No evaluation report" in at.info[0].value
    assert "python -m tda evaluate" in at.info[0].value
    assert not at.get("plotly_chart")
    at.number_input(key="diag_n").set_value(8)
    at.button(key="diag_recompute").click().run()
    assert not at.exception, at.exception
    assert not at.info and len(at.get("plotly_chart")) >= 6
    assert "Live small version" in " ".join(c.value for c in at.caption)
    assert not (tiny_run_dir / "report").exists() and not (tiny_run_dir / CLASSIFIER_DIR).exists()


def test_evaluate_computes_only_the_parts_asked_for(tiny_run_dir, classifier_dir, tmp_path):
    run = tmp_path / "tiny"
    shutil.copytree(tiny_run_dir, run)
    shutil.copytree(classifier_dir, run / CLASSIFIER_DIR)
    sizes = EvalSizes(samples=40, seeds=2, draws=2, sizes=(1,), tar_samples=3, tar_controls=2,
                      parts=("candidate",))
    report = evaluate(run, run / "report", sizes)
    assert not report["complete"] and "fidelity" not in report and "attribution" not in report
    assert set(report["candidate"]["rules"]) == {"mean", "mixture"}
    assert set(report["by_n"][0]["tar"]) == {"mean", "mixture"}
    assert json.loads((run / "report" / REPORT).read_text())["by_n"] == report["by_n"]  # saved
    with pytest.raises(TdaError, match="unknown report parts"):
        evaluate(run, run / "report", EvalSizes(parts=("everything",)))
    # one rule at a time, each with its own sizes: the other rule's saved result is kept
    one = evaluate(run, run / "report2", replace(sizes, tar_rules=("mixture",)))
    assert set(one["candidate"]["rules"]) == {"mixture"}
    two = evaluate(run, run / "report2", replace(sizes, tar_rules=("mean",), tar_samples=2))
    rules = two["candidate"]["rules"]
    assert list(rules) == ["mean", "mixture"]  # the run's default rule first
    assert (rules["mean"]["samples"], rules["mixture"]["samples"]) == (2, 3)
    with pytest.raises(TdaError, match="unknown combination rules"):
        evaluate(run, run / "report", replace(sizes, tar_rules=("median",)))


def test_a_killed_candidate_test_resumes_from_its_saved_chunks(
        tiny_run_dir, classifier_dir, tmp_path, monkeypatch):
    """The candidate part saves every chunk of samples as it finishes (safetensors, no
    pickle): killed after the first chunk, a rerun computes only the rest, and the result
    is the one an uninterrupted evaluation gives."""
    import tda.evaluate as evaluation
    from tda.candidate import load_tests, save_tests

    run = tmp_path / "tiny"
    shutil.copytree(tiny_run_dir, run)
    shutil.copytree(classifier_dir, run / CLASSIFIER_DIR)
    sizes = EvalSizes(samples=40, seeds=2, draws=2, sizes=(1,), tar_samples=7, tar_controls=3,
                      parts=("candidate",), tar_rules=("mixture",))
    monkeypatch.setattr(evaluation, "CANDIDATE_CHUNK", 3)
    whole = evaluate(run, tmp_path / "whole", sizes)["candidate"]["rules"]["mixture"]

    real, calls, kill = evaluation.candidate_tests, [], [True]

    def killed_after_one_chunk(ex, seeds, **kw):
        calls.append(list(seeds))
        if len(calls) == 2 and kill and kill.pop():
            raise KeyboardInterrupt
        return real(ex, seeds, **kw)

    monkeypatch.setattr(evaluation, "candidate_tests", killed_after_one_chunk)
    with pytest.raises(KeyboardInterrupt):
        evaluate(run, tmp_path / "resumed", sizes)
    saved = sorted((tmp_path / "resumed" / "cache").glob("candidate-mixture-*/*.safetensors"))
    assert [p.name for p in saved] == ["seeds-100000-100002.safetensors"]
    calls.clear()
    resumed = evaluate(run, tmp_path / "resumed", sizes)["candidate"]["rules"]["mixture"]
    assert [c[0] for c in calls] == [100_003, 100_006]  # the saved chunk is not recomputed
    for key in ("tar", "tar_low", "tar_high", "p_change_candidate", "p_change_random",
                "share_copies", "per_sample"):
        assert resumed[key] == whole[key], key
    # the saved tests read back exactly; a damaged file is a clear error, not a crash
    tests = load_tests(saved[0])
    again = tmp_path / "again.safetensors"
    save_tests(again, tests)
    for a, b in zip(tests, load_tests(again), strict=True):
        assert json.dumps(a.summary()) == json.dumps(b.summary())  # NaN-safe
        assert torch.equal(a.sample, b.sample)
        assert np.array_equal(a.control_effects, b.control_effects)
    again.write_bytes(b"not a safetensors file")
    with pytest.raises(TdaError, match="no readable candidate tests"):
        load_tests(again)
