"""The shipped runs in assets/: they load, validate and reproduce their reference samples.

Every run in assets/ with a reference.json is checked; the ones named here have their
own facts tested too.

assets/default is the attributable run (N = 256 memorising members, mixture rule);
assets/n16-replay is the generalising contrast (N = 16, replay) whose reference sample
was recorded before the mixture rule existed: it checks that `mean` chains stay
bit-for-bit what they were.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tda import views
from tda.api import Explorer
from tda.ensemble import load_run

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEFAULT = ASSETS / "default"
CONTRAST = ASSETS / "n16-replay"


SHIPPED = sorted(p.parent for p in ASSETS.glob("*/reference.json"))  # every run in assets/


@pytest.fixture(scope="module", params=SHIPPED, ids=[p.name for p in SHIPPED])
def shipped(request) -> Explorer:
    return Explorer(load_run(request.param))


def test_default_run_is_the_documented_recipe():
    run = load_run(DEFAULT)
    assert run.N >= 256 and (run.n, run.h) == (16, 4)
    assert run.config.sample.combine == "mixture"
    assert run.config.data.dataset == "mnist" and run.config.data.image_size == 16
    assert run.config.sample.num_inference_steps == 50
    assert run.config.train.lr_schedule == "cosine" and run.config.train.init == "shared"
    assert not run.config.model.attention
    assert sorted(set(run.labels.tolist())) == list(range(10))  # class-balanced digits
    contrast = load_run(CONTRAST)
    assert (contrast.N, contrast.h, contrast.config.sample.combine) == (16, 8, "mean")
    assert contrast.config.train.replay == 0.5


def test_shipped_runs_reproduce_their_reference_samples(shipped):
    path = Path(shipped.run.path)
    ref = load_file(str(path / "reference.safetensors"))
    seed = int(json.loads((path / "reference.json").read_text())["seed"])
    s = shipped.sample(seed)
    torch.testing.assert_close(s.noise.x_T, ref["x_T"], rtol=0, atol=0)
    torch.testing.assert_close(s.noise.noise, ref["noise"], rtol=0, atol=0)
    torch.testing.assert_close(s.sample, ref["sample"], rtol=0, atol=1e-4)


def test_assets_stay_small():
    total = sum(p.stat().st_size for p in ASSETS.rglob("*") if p.is_file())
    assert total <= 80 * 2**20, f"assets/ is {total / 2**20:.1f} MB"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_run_has_its_candidate_test_and_featured_seeds(path):
    """What the Home page, the Ladder and a class's first views read of every run."""
    from tda.featured import load_featured
    from tda.ladder import rung

    run = load_run(path)
    r = rung(path.name, path)
    assert r is not None and r["N"] == run.N and r["tar"] is not None, "python -m tda evaluate"
    assert r["samples"] >= 64 and r["tar_low"] <= r["tar"] <= r["tar_high"]
    assert load_featured(run) is not None, f"python -m tda precompute --run {path}"


def test_home_page_tells_whether_samples_are_attributable(monkeypatch):
    """The shipped app, as a class opens it: Home says whether samples are attributable,
    and Home, Generate and Attribution of the default (featured) seed run no chain."""
    from streamlit.testing.v1 import AppTest

    from tests.conftest import spy_jobs
    from ui.nav import BY_URL

    monkeypatch.delenv("TDA_RUNS", raising=False)
    monkeypatch.delenv("TDA_ASSETS", raising=False)
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    chains = spy_jobs(monkeypatch)  # every chain a page runs goes to a worker pool
    at = AppTest.from_file(str(root / "app.py"), default_timeout=120).run()
    assert not at.exception
    # nothing waits, so no page draws raw HTML (its parser is JavaScript every browser
    # would load first): not the still style of waiting pages, nor anything else
    assert not any(m.proto.allow_html for m in at.markdown)
    for page in ("generate", "attribution"):
        at.switch_page(BY_URL[page].path).run()
        assert not at.exception, at.exception
        assert not any(m.proto.allow_html for m in at.markdown), page
    assert not chains, "a featured page ran chains: python -m tda precompute --run assets/default"
    at.switch_page(BY_URL[""].path).run()
    shown = " ".join(w.value for w in (*at.warning, *at.success))
    finding = views.tar_finding(DEFAULT)
    assert finding is not None and "Is attribution meaningful here?" in shown
    assert f"TAR = {finding['rows'][0]['tar']:.2f}" in shown
    run = load_run(DEFAULT)
    facts = next(m.value for m in at.markdown if "training images** (N)" in m.value)
    assert facts.startswith(f"**{run.N:,} training images** (N) · **16 members** (n)")
    tars = " ".join(c.value for c in at.caption if c.value.startswith("Candidate test (TAR"))
    assert all(f"**{r['rule']}**" in tars and f"{r['tar']:.2f}" in tars for r in finding["rows"])


def test_the_default_runs_featured_seeds_are_current_and_equal_a_fresh_computation():
    """The class's first views come from assets/default/featured: they must belong to these
    members (fingerprint) and be what the app would compute now (seed 0 recomputed)."""
    from tda.attribution import (
        attribute,
        counterfactuals_for,
        default_method,
        exact_counterfactuals,
    )
    from tda.featured import DEFAULT_SEEDS, load_featured

    fresh = Explorer(load_run(DEFAULT))
    featured = load_featured(fresh.run)
    assert featured is not None, "rerun: python -m tda precompute --run assets/default"
    assert featured.seeds("mixture") == list(DEFAULT_SEEDS)
    entry = featured.get(0, "mixture")
    atol = 1e-4  # another batch shape may round float32 differently over 50 steps
    s = fresh.sample(0)
    torch.testing.assert_close(entry.sample, s.sample, atol=atol, rtol=0)
    torch.testing.assert_close(entry.tensors["members"], fresh.member_samples(0), atol=atol,
                               rtol=0)
    method = default_method(DEFAULT, "mixture")  # the page's default, from the report
    got, want = entry.attribution(method), attribute(fresh, 0, method)
    assert got is not None, f"featured seeds lack {method}: python -m tda precompute"
    # exact chains in another batch shape: each counterfactual is off by about the
    # sample's own difference (delta); a resemblance score moves by at most that in
    # pixels (half of model space), twice over (the sample and the counterfactual)
    delta = max(float((entry.sample - s.sample).norm()), 1e-6)
    assert list(got.verified_rows) == list(want.verified_rows)
    ok = np.isfinite(want.scores)
    np.testing.assert_allclose(got.scores[ok], want.scores[ok], rtol=0, atol=4 * delta + 1e-5)
    assert got.order[0] == want.order[0]
    exact = entry.attribution("exact")
    assert exact is not None and exact.exact
    top = exact.order[:2]  # the exact scores of the top two, recomputed chain by chain
    cf = exact_counterfactuals(fresh, 0, None, fresh.run.codes[top])
    torch.testing.assert_close(cf, counterfactuals_for(fresh, exact, top), atol=atol, rtol=0)
    norms = (cf - s.sample).flatten(1).norm(dim=1).numpy()
    assert norms == pytest.approx(exact.scores_by["magnitude"][top], abs=atol * 10)
