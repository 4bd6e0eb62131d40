"""Featured seeds (tda/featured.py): precomputed results equal a fresh computation, and
stale or damaged ones are ignored."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tda.api import Explorer
from tda.attribution import DEFAULT_METHOD, attribute, counterfactuals_for
from tda.candidate import candidate_test
from tda.cli import main
from tda.featured import CONTROLS, FEATURED_DIR, INDEX, fingerprint, load_featured, precompute
from tda.index import nearest_row

# the same chains computed twice in one process: only float32 rounding of reordered sums
ATOL = 1e-5


def close(a, b) -> None:
    a = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, atol=ATOL, rtol=1e-5)


@pytest.fixture(scope="module")
def featured_run(tiny_run_dir, tmp_path_factory):
    """A copy of the tiny run with seeds 0 and 2 precomputed (exact scores included)."""
    import shutil

    run_dir = tmp_path_factory.mktemp("featured") / "tiny"
    shutil.copytree(tiny_run_dir, run_dir)
    path = precompute(Explorer(run_dir), [0, 2])
    assert path == run_dir / FEATURED_DIR / INDEX
    return run_dir


def test_precomputed_results_equal_a_fresh_computation(featured_run):
    fresh = Explorer(featured_run)  # nothing cached
    featured = load_featured(fresh.run)
    assert featured is not None and featured.seeds("mean") == [0, 2]
    entry = featured.get(2, "mean")
    s = fresh.sample(2)
    close(entry.sample, s.sample)
    close(entry.tensors["trajectory"], s.trajectory)
    close(entry.tensors["members"], fresh.member_samples(2))

    assert entry.home_row == nearest_row(fresh.run.images, s.sample)  # the sample's own image
    home = fresh.run.codes[entry.home_row] == 0
    cf = entry.counterfactual(home)
    close(cf.counterfactual, fresh.counterfactual(2, active=list(home)).counterfactual)
    assert list(cf.excluded) == list(fresh.counterfactual(2, active=list(home)).excluded)
    assert entry.counterfactual(np.ones(fresh.n, bool)).score == 0.0
    assert entry.counterfactual(np.eye(fresh.n, dtype=bool)[0]) is None  # not precomputed

    for method in (DEFAULT_METHOD, "exact"):  # the page's default without a report, exact
        got, want = entry.attribution(method), attribute(fresh, 2, method)
        assert (got.method, got.seed, got.steps, got.exact) == (method, 2, 10, want.exact)
        assert set(got.scores_by) == set(want.scores_by) and got.score == want.score
        for name in got.scores_by:
            close(got.with_score(name).scores, want.with_score(name).scores)
            close(got.with_score(name).null_scores, want.with_score(name).null_scores)
        for name in ("pvalues", "qvalues", "verified_rows"):
            close(getattr(got, name), getattr(want, name))
        assert list(got.order[:5]) == list(want.order[:5])
        rows = want.order[:4]
        close(counterfactuals_for(fresh, got, rows), counterfactuals_for(fresh, want, rows))
    assert entry.attribution("last-step") is None

    got, want = entry.candidate(), candidate_test(fresh, 2, controls=CONTROLS)
    assert got.summary() == pytest.approx(want.summary(), abs=ATOL, nan_ok=True)
    assert len(got.control_rows) == min(CONTROLS, fresh.run.N - 1)
    close(got.counterfactual, want.counterfactual)
    close(got.control_effects, want.control_effects)
    assert list(got.control_nearest) == list(want.control_nearest)


def test_stale_or_damaged_results_are_ignored(featured_run, tmp_path):
    import shutil

    run_dir = tmp_path / "tiny"
    shutil.copytree(featured_run, run_dir)
    run = Explorer(run_dir).run
    assert load_featured(run, steps=5) is None  # the app samples with other steps
    index_path = run_dir / FEATURED_DIR / INDEX
    old = json.loads(index_path.read_text())
    index_path.write_text(json.dumps({**old, "recipe": {**old["recipe"], "score_version": 1}}))
    assert load_featured(run) is None  # computed under another meaning of the scores
    index_path.write_text(json.dumps(old))

    index_path = run_dir / FEATURED_DIR / INDEX
    index = json.loads(index_path.read_text())
    assert index["fingerprint"] == fingerprint(run.manifest)
    damaged = run_dir / FEATURED_DIR / index["entries"][0]["file"]
    damaged.write_bytes(damaged.read_bytes()[:-8] + b"\0" * 8)
    featured = load_featured(run)
    seed = index["entries"][0]["seed"]
    assert featured.get(seed, "mean") is None and featured.get(2, "mean") is not None

    index["fingerprint"] = "0" * 64  # results of another version of the run
    index_path.write_text(json.dumps(index))
    assert load_featured(run) is None
    shutil.rmtree(run_dir / FEATURED_DIR)
    assert load_featured(run) is None


def test_the_fingerprint_follows_members_not_the_default_rule(featured_run):
    manifest = Explorer(featured_run).run.manifest
    other_rule = json.loads(json.dumps(manifest))
    other_rule["config"]["sample"]["combine"] = "mixture"
    other_rule["files"]["report/report.json"] = "ab" * 32  # a report added later
    assert fingerprint(other_rule) == fingerprint(manifest)
    retrained = json.loads(json.dumps(manifest))
    member = next(k for k in retrained["files"] if k.startswith("members/"))
    retrained["files"][member] = "cd" * 32
    assert fingerprint(retrained) != fingerprint(manifest)


def test_the_command_adds_seeds_and_rules(featured_run, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "tiny"
    shutil.copytree(featured_run, run_dir)
    args = ["precompute", "--run", str(run_dir), "--seeds", "5", "--exact", "no"]
    assert main(args) == 0
    assert main([*args[:-4], "--seeds", "5", "--combine", "mixture", "--exact", "no"]) == 0
    assert "seeds 5 (mixture)" in capsys.readouterr().out
    featured = load_featured(Explorer(run_dir).run)
    assert featured.seeds("mean") == [0, 2, 5] and featured.seeds("mixture") == [5]
    entry = featured.get(5, "mixture")
    assert entry.attribution("exact") is None and entry.attribution(DEFAULT_METHOD) is not None
    assert entry.candidate().combine == "mixture"
    close(entry.mixture_loglik, Explorer(run_dir, combine="mixture").sample(5).mixture_loglik)
    assert featured.get(5, "mean").mixture_loglik is None  # the mean rule has none
    assert main(["precompute", "--run", str(tmp_path / "nothing"), "--seeds", "0"]) == 2


def test_featured_seeds_open_without_any_computation(featured_run, tmp_path, monkeypatch):
    """The app on a run with featured seeds: their pages need no job at all, the sidebar
    names them, and the exact comparison is there at once; another seed computes."""
    from streamlit.testing.v1 import AppTest

    from tests.conftest import spy_jobs
    from tests.test_app import ROOT, TIMEOUT
    from ui.nav import BY_URL

    monkeypatch.setenv("TDA_RUNS", str(featured_run.parent))
    monkeypatch.setenv("TDA_ASSETS", str(tmp_path / "no-assets"))
    chains = spy_jobs(monkeypatch)  # every chain a page runs goes to a worker pool
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    assert at.number_input(key="seed").value == 0  # the default seed is featured
    assert "Featured seeds, ready at once: 0, 2" in [c.value for c in at.sidebar.caption]
    for page in ("generate", "attribution", "training_set"):
        at.switch_page(BY_URL[page].path).run()
        assert not at.exception, at.exception
    at.switch_page(BY_URL["attribution"].path).run()
    shown = " ".join(x.value for x in at.markdown)  # the figures' markdown tables
    assert "| Spearman ρ vs exact |" in shown and "| Its floor's p99 |" in shown
    assert not chains
    at.number_input(key="seed").set_value(3).run()  # not featured: computed on demand
    assert not at.exception and len(chains) >= 2


def test_configure_after_precompute_leaves_the_run_loadable(featured_run, tmp_path):
    """featured/ is not hashed into the manifest: rebuilding it never breaks the run."""
    import shutil

    from tda.ensemble import load_run, read_manifest

    run_dir = tmp_path / "tiny"
    shutil.copytree(featured_run, run_dir)
    assert main(["configure", "--run", str(run_dir), "--combine", "mixture"]) == 0
    assert not [f for f in read_manifest(run_dir)["files"] if f.startswith(FEATURED_DIR)]
    assert main(["precompute", "--run", str(run_dir), "--seeds", "0", "--exact", "no"]) == 0
    run = load_run(run_dir)  # every hash still holds
    featured = load_featured(run)  # the mean entries stay current: same members
    assert featured.seeds("mean") == [0, 2] and featured.seeds("mixture") == [0]
