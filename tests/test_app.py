"""Page tests of the Streamlit explorer (AppTest) on the tiny run.

The app finds the tiny run through TDA_RUNS; TDA_ASSETS points at an empty folder so
that a shipped assets/default never leaks in. Streamlit's caches are process-wide, so
later tests reuse the samples and attributions of earlier ones.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tda import pictures, views
from tda.index import nearest_row
from ui import render, runs, sidebar
from ui.nav import BY_URL

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 120


@pytest.fixture
def app_env(tiny_run_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TDA_RUNS", str(tiny_run_dir.parent))
    monkeypatch.setenv("TDA_ASSETS", str(tmp_path / "no-assets"))
    return tiny_run_dir


def open_app(page: str | None = None) -> AppTest:
    """Home, then the page at URL path `page` (e.g. "generate"), as a visitor clicks."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    if page:
        at.switch_page(BY_URL[page].path).run()
    assert not at.exception, at.exception
    return at


@pytest.fixture
def sheets(monkeypatch) -> list[tuple[list, list[str]]]:
    """Every contact sheet a page draws: (its images, their captions), in order."""
    drawn: list = []
    real = pictures.contact_sheet

    def spy(images, captions, *args, **kw):
        drawn.append((list(images), list(captions)))
        return real(images, captions, *args, **kw)

    monkeypatch.setattr(pictures, "contact_sheet", spy)
    return drawn


def choice(at: AppTest, key: str):
    """The sidebar choice `key`: a segmented control for a few short options, else a
    select box (ui.sidebar.choice)."""
    found = [w for w in (*at.segmented_control, *at.selectbox) if w.key == key]
    assert len(found) == 1, f"{len(found)} widgets with key {key}"
    return found[0]


def charts_after_toggles(at: AppTest) -> list[str]:
    """Switch on every "interactive chart" pill of the page; the charts' specs."""
    for p in at.pills:
        if p.key and p.key.startswith("chart_"):
            p.set_value(render.CHART_ON if p.options[0] in render.CHART_ON else render.CHART_SHOW)
    at.run()
    assert not at.exception, at.exception
    return [c.proto.spec for c in at.get("plotly_chart")]


def images(at: AppTest) -> list:
    """Every single image shown on the page (st.image lists flattened), in order."""
    return [im for el in at.get("image") for im in el.proto.imgs]


def captions(at: AppTest) -> list[str]:
    return [im.caption for im in images(at)]


def metrics(at: AppTest) -> dict[str, str]:
    """Labelled figures: st.metric widgets, and one-row markdown tables (render.table)."""
    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split(" | ")]

    out = {m.label: m.value for m in at.metric}
    for value in (m.value for m in at.markdown):
        lines = value.splitlines()
        if len(lines) == 3 and lines[0].startswith("| ") and lines[1].startswith("|---"):
            out.update(zip(cells(lines[0]), cells(lines[2]), strict=True))
    return out


def markdown(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown]


def facts(at: AppTest) -> str:
    """Home's run facts: the paragraph under "Loaded run", starting with N."""
    return next(v for v in markdown(at) if "training images** (N)" in v)


def test_no_run_explains_how_to_train_one(tmp_path, monkeypatch):
    monkeypatch.setenv("TDA_RUNS", str(tmp_path / "empty"))
    monkeypatch.setenv("TDA_ASSETS", str(tmp_path / "no-assets"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert "No trained run was found" in at.info[0].value
    assert "python -m tda train" in at.info[0].value
    assert not at.metric and not at.get("plotly_chart")


def test_broken_run_is_refused_with_its_reason(tiny_run_copy, tmp_path, monkeypatch):
    (tiny_run_copy / "codes.safetensors").write_bytes(b"tampered")
    monkeypatch.setenv("TDA_RUNS", str(tiny_run_copy.parent))
    monkeypatch.setenv("TDA_ASSETS", str(tmp_path / "no-assets"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert "Cannot open run" in at.error[0].value and "codes.safetensors" in at.error[0].value


def test_home_summarises_the_run(app_env, sheets):
    at = open_app()
    assert choice(at, "run").value == f"{app_env.parent.name}/tiny"
    assert facts(at) == (
        "**16 training images** (N) · **6 members** (n) · each image seen by **h = 3** "
        "members · digits, 8×8 px, 1 channel(s) · 10 sampling steps"
    )
    assert any("shared: members start from the same weights" in c.value for c in at.caption)
    # a first view that draws at once: pictures, the interactive charts on request
    assert not at.get("plotly_chart") and not at.get("table") and not at.metric
    assert len(at.get("page_link")) == len(BY_URL)  # the navigation; Home's last caption points there
    ex = runs.explorer(runs.run_key(runs.discover_runs()[choice(at, "run").value]))
    own = nearest_row(ex.run.images, ex.sample(0).sample)  # Home removes the sample's image
    names = [f"training image #{own}", "sample (seed 0)", f"without image #{own}", "residual"]
    assert captions(at) == [
        "",  # the code matrix, drawn as a picture
        "",  # the members' weights with and without that image
        " · ".join(names),  # one picture of the four, their captions drawn in
    ]
    assert [c for _, c in sheets] == [names]
    assert views.to_image(ex.run.images[own], 128) == sheets[0][0][0]  # the image itself
    assert any("resemblance lost" in m for m in markdown(at))
    charts = charts_after_toggles(at)  # the interactive code matrix replaces its picture
    assert len(charts) == 1 and '"heatmap"' in charts[0].lower() and "Code matrix" in charts[0]
    assert captions(at)[0] == ""  # the weights picture stays
    assert len(images(at)) == 2


def test_generate_shows_sample_trajectory_members_and_follows_the_seed(
    app_env, tiny_explorer, sheets
):
    seen = tiny_explorer.run.codes.sum(0)
    at = open_app("generate")
    assert len(images(at)) == 1 + 1 + 1 + 1  # sample, chosen step, filmstrip, members' sheet
    caps = captions(at)
    assert caps[0] == "full ensemble, 10 steps"
    assert caps[1].startswith("after step 10/10")
    (frames, frame_caps), (members, member_caps) = sheets[-2:]  # after Home's
    assert frame_caps == [f"step {k}" for k in range(11)]
    traj = tiny_explorer.trajectory(0)
    assert all(np.allclose(f, traj[k], atol=1e-6) for k, f in enumerate(frames))
    assert member_caps == [f"m{i}, saw {seen[i]}" for i in range(6)]
    want = tiny_explorer.member_samples(0)
    assert all(np.allclose(m, w, atol=1e-6) for m, w in zip(members, want, strict=True))
    timing = next(v for v in markdown(at) if v.startswith("| computed | seconds |"))
    rows = [line.split(" | ") for line in timing.splitlines()[2:]]
    assert [r[0] for r in rows] == ["| Ensemble sample", "| Trajectory", "| All 6 members alone"]
    assert all(r[1].endswith(" s |") for r in rows) and not at.metric
    assert at.subheader[0].value == "Sample of seed 0"
    first = images(at)[0].url

    at.slider(key="traj_step").set_value(0).run()
    assert captions(at)[1] == "x_T (pure noise)"

    at.number_input(key="seed").set_value(3).run()
    assert not at.exception
    assert at.subheader[0].value == "Sample of seed 3"
    assert images(at)[0].url != first  # another seed, another sample

    at.switch_page(BY_URL["ablation"].path).run()  # the seed carries over to other pages
    assert at.number_input(key="seed").value == 3
    assert captions(at)[0] == "full ensemble (seed 3)"


ROW_CAPTIONS = ["training image", "sample without it", "residual"]


def _check_candidate_section(at: AppTest, drawn: tuple[list, list[str]]) -> None:
    """The candidate test comes first: one sheet of four images and one verdict."""
    assert at.subheader[0].value == "Is this sample attributable?"
    pics, caps = drawn
    assert len(pics) == 4
    candidate = caps[1].removeprefix("candidate: #")
    assert caps[0].startswith("sample (seed ") and candidate.isdigit()
    assert caps[2] == f"without #{candidate}" and caps[3].startswith("its nearest: #")
    assert np.array_equal(pics[1], _images_of(at)[int(candidate)])
    said = [m.value for m in (*at.success, *at.info, *at.warning) if "Removing x̂" in m.value]
    assert len(said) == 1 and "flip rate" in said[0]
    assert said[0].startswith(("**Attributable to #", "**Needs #", "**Not attributable"))


def _floor_warnings(at: AppTest) -> list[str]:
    return [w.value for w in at.warning if "Removing x̂" not in w.value]


def _images_of(at: AppTest) -> np.ndarray:
    """The training images of the run the page shows."""
    return np.asarray(runs.explorer(runs.run_key(runs.discover_runs()[
        choice(at, "run").value])).run.images)


def _check_attribution_page(at: AppTest, sheets: list, k: int = 8) -> None:
    """The candidate sheet, then top-k rows of one sheet each (training image, the sample
    without it, residual), a badge per row, the blend note iff top-1 is within its floor."""
    assert not at.exception, at.exception
    drawn = sheets[-(1 + k):]  # the last run's sheets
    _check_candidate_section(at, drawn[0])
    assert len(images(at)) == 1 + k  # candidate sheet, a sheet per row
    assert all(caps == ROW_CAPTIONS and len(pics) == 3 for pics, caps in drawn[1:])
    rows = [s for s in markdown(at) if s.startswith("**#")]
    assert len(rows) == k and rows[0].startswith("**#1 · training image ")
    named = [int(r.split("training image ")[1].split("**")[0]) for r in rows]
    train = _images_of(at)
    for (pics, _), j in zip(drawn[1:], named, strict=True):  # the row's own image comes first
        assert np.array_equal(np.asarray(pics[0]), train[j])
    badges = [s for s in markdown(at) if "-badge[" in s]
    assert len(badges) == k
    m = metrics(at)
    blend = any("No training image explains this sample" in i.value for i in at.info)
    if "Its floor's p99" in m:
        top, p99 = float(m[next(x for x in m if x.startswith("Top-1 ") and x != "Top-1")]), \
            float(m["Its floor's p99"])
        assert m["Top-1"] == f"#{named[0]}"
        if top != p99:  # equal when rounded: either side
            assert blend == (top < p99)


def codes_images(explorer) -> np.ndarray:
    return explorer.run.images


def _method(at: AppTest):
    return next(s for s in at.selectbox if s.key and s.key.startswith("method_"))


def _row_scores(at: AppTest) -> list[str]:
    return [s for s in markdown(at) if s.startswith(("resemblance **", "magnitude **",
                                                     "features **", "nearness **"))]


def test_exact_counterfactual_chains_run_in_a_worker_and_are_exact(app_env, sheets,
                                                                   tiny_explorer, monkeypatch):
    from tests.conftest import spy_jobs

    ops = spy_jobs(monkeypatch)
    at = open_app("attribution")
    _method(at).set_value("jacobian").run()
    assert "counterfactuals" not in ops  # jacobian: a matrix product in the server
    exact = next(t for t in at.toggle if t.label == "Exact counterfactual chains")
    exact.set_value(True).run()
    assert not at.exception and ops.count("counterfactuals") == 1  # one call for the top-k
    images, caps = sheets[-8]  # the first row: training image, sample without it, residual
    row = int(next(s for s in markdown(at) if s.startswith("**#1 · training image "))
              .split("training image ")[1].split("**")[0])
    assert caps[1] == "sample without it" and np.array_equal(images[0], _images_of(at)[row])
    want = tiny_explorer.counterfactual(0, remove_rows=[row]).counterfactual.numpy()
    # one chain against a batch of k in another process: each step may round a few
    # float32 eps of |x| differently, and the K steps add up
    traj = tiny_explorer.trajectory(0)
    atol = (len(traj) - 1) * 8 * float(np.finfo(np.float32).eps) * float(traj.abs().max())
    np.testing.assert_allclose(images[1], want, rtol=0, atol=atol)


def test_attribution_methods_verification_and_comparison(app_env, sheets):
    at = open_app("attribution")
    assert _method(at).value == "screened"  # no report measured the methods: screened
    assert at.segmented_control(key="score").value == "resemblance"
    _check_attribution_page(at, sheets)
    assert all("(exact)" in s for s in _row_scores(at))  # every screened row: exact
    assert any("has not been measured against exact" in c.value for c in at.caption)
    badges = [s for s in markdown(at) if "-badge[" in s]
    assert all("no badge: method not measured" in b for b in badges)  # no report, no badge
    assert not [b for b in at.button if b.label.startswith("Verify")]  # already exact
    assert not at.get("plotly_chart")  # charts on request
    charts = charts_after_toggles(at)  # candidate, histogram; no exact scores for a scatter
    assert len(charts) == 2 and "How far each ablation" in charts[0]

    at.segmented_control(key="score").set_value("magnitude").run()
    _check_attribution_page(at, sheets)
    assert all(s.startswith("magnitude **") for s in _row_scores(at))

    for method in ("last-step", "individual"):
        _method(at).set_value(method).run()
        _check_attribution_page(at, sheets)
        assert any(f"**{method}**:" in c.value for c in at.caption)
        assert all("(approximate)" in s for s in _row_scores(at))

    _method(at).set_value("nearest").run()
    _check_attribution_page(at, sheets)
    assert "no noise floor" in " ".join(markdown(at))
    assert all(s.startswith("nearness **") for s in _row_scores(at))

    _method(at).set_value("exact").run()
    assert len(images(at)) == 1  # the candidate sheet; scores wait for the button
    assert any("one full chain per training image" in m.value for m in at.info)
    next(b for b in at.button if b.label.startswith("Compute exact")).click().run()
    at.segmented_control(key="score").set_value("resemblance").run()
    _check_attribution_page(at, sheets)
    assert all("(exact)" in s for s in _row_scores(at))
    assert not [b for b in at.button if b.label.startswith("Verify")]

    _method(at).set_value("jacobian").run()  # exact is cached: scatter + rho
    at.segmented_control(key="score").set_value("magnitude").run()  # the tiny run copies
    _check_attribution_page(at, sheets)  # nothing: its resemblance scores are all 0
    m = metrics(at)
    assert -1.0 <= float(m["Spearman ρ vs exact"]) <= 1.0
    assert m["Top-8 overlap with exact"].endswith("/8")
    assert len(charts_after_toggles(at)) == 3  # candidate, histogram, scatter

    verify = next(b for b in at.button if b.label.startswith("Verify exactly"))
    verify.click().run()
    _check_attribution_page(at, sheets)
    assert all("(exact)" in s for s in _row_scores(at))

    at.slider(key="topk").set_value(3).run()
    _check_attribution_page(at, sheets, k=3)


def test_ablation_toggles_members_and_removes_images(app_env, tiny_explorer):
    codes = tiny_explorer.run.codes
    at = open_app("ablation")
    assert metrics(at)["Members on"] == "6/6"
    assert metrics(at)["Distance ‖y′ − y‖"] == "0.0000"
    assert len(images(at)) == 3

    at.toggle(key="member_0").set_value(False).run()
    assert metrics(at)["Members on"] == "5/6"
    assert float(metrics(at)["Distance ‖y′ − y‖"]) > 0
    assert metrics(at)["Unseen training images"] == "0"  # h = 3: others saw them

    at.selectbox(key="only_member").set_value(2).run()
    next(b for b in at.button if b.label == "Only member 2").click().run()
    assert [at.toggle(key=f"member_{i}").value for i in range(6)] == [i == 2 for i in range(6)]
    unseen = int((codes[:, 2] == 0).sum())
    assert metrics(at)["Unseen training images"] == str(unseen)
    assert len(images(at)) == 3 + unseen
    assert captions(at)[1] == "1 of 6 members on"

    own = nearest_row(codes_images(tiny_explorer), tiny_explorer.sample(0).sample)
    assert at.number_input(key="remove_row_0").value == own  # the sample's own image
    at.number_input(key="remove_row_0").set_value(5).run()
    next(b for b in at.button if b.label == "Remove image #5").click().run()
    assert [at.toggle(key=f"member_{i}").value for i in range(6)] == list(codes[5] == 0)
    expected = tiny_explorer.counterfactual(0, remove_rows=[5])
    assert metrics(at)["Distance ‖y′ − y‖"] == f"{expected.score:.4f}"
    assert "#5 · label" in " ".join(captions(at)[3:])

    for i in range(6):
        at.toggle(key=f"member_{i}").set_value(False)
    at.run()
    assert "at least one member" in at.warning[0].value and not at.metric

    next(b for b in at.button if b.label == "All on").click().run()
    assert metrics(at)["Members on"] == "6/6"


def _png(array: np.ndarray, size: int = 64) -> bytes:
    buf = io.BytesIO()
    views.to_image(array, size).save(buf, format="PNG")
    return buf.getvalue()


def test_training_set_browse_pick_and_search(app_env, tiny_explorer, sheets):
    run = tiny_explorer.run
    at = open_app("training_set")
    caps = captions(at)
    assert caps[0] == "#index: label"  # the page of the training set, one sheet
    shown, shown_caps = sheets[-3]  # then the sheets of neighbours
    assert shown_caps == [f"#{j}: {int(run.labels[j])}" for j in range(16)]
    assert all(np.array_equal(im, run.images[j]) for j, im in enumerate(shown))

    assert at.segmented_control(key="browse_label").value == "all"  # shown chosen
    at.segmented_control(key="browse_label").set_value("3").run()
    assert sheets[-3][1] == ["#6: 3", "#7: 3"]  # then the two sheets of neighbours
    own = at.number_input(key="picked_0").value  # opens on the sample's nearest image
    assert captions(at)[:2] == ["#index: label", f"#{own} · label {int(run.labels[own])}"]

    at.number_input(key="picked_0").set_value(5).run()
    code = views.bits(run.codes[5])
    assert any(s.startswith(f"Code `{code}`") for s in markdown(at))
    assert f"#5 · label {int(run.labels[5])}" in captions(at)
    _, (neigh_images, neigh), (query_images, query) = sheets[-3:]  # browse, neighbours, sample's
    assert len(neigh) == 6 and not any(c.startswith("#5 ") for c in neigh)
    assert all(" · L2 " in c for c in neigh)
    # each neighbour is the training image its caption names
    for im, c in zip(neigh_images, neigh, strict=True):
        assert np.array_equal(im, run.images[int(c.split(" · ")[0][1:])])

    # the current sample's neighbours (memorisation check): 6 more after the sample itself
    assert query[0] == "seed 0 (query)" and len(query) == 7
    assert all(" · L2 " in c for c in query[1:])
    np.testing.assert_allclose(query_images[0], tiny_explorer.sample(0).sample.numpy(),
                               atol=1e-5)

    # an image of the training set, uploaded, finds itself at distance 0
    at.file_uploader(key="upload").set_value(
        ("seven.png", _png(run.images[12], size=8), "image/png")
    )
    at.run()
    assert not at.error
    upload = sheets[-1][1]
    assert upload[0] == "your image, converted"
    assert upload[1] == f"#12 · {int(run.labels[12])} · L2 0.00"

    at.file_uploader(key="upload").set_value(("notes.png", b"not an image at all", "image/png"))
    before = len(sheets)
    at.run()
    assert not at.exception
    assert "Could not read notes.png" in at.error[0].value
    assert len(sheets) == before + 3  # browse, neighbours, the sample's: no upload's


def test_training_set_shows_influence_once_attributed(app_env):
    at = open_app("attribution")  # computes (or reuses) the screened scores for seed 0
    at.switch_page(BY_URL["training_set"].path).run()
    own = at.number_input(key="picked_0").value  # opens on the sample's nearest image
    assert own == nearest_row(_images_of(at), runs.explorer(runs.run_key(
        runs.discover_runs()[choice(at, "run").value])).sample(0).sample)
    at.number_input(key="picked_0").set_value(9).run()
    text = " ".join(markdown(at))
    assert "On the sample of seed 0 (screened): resemblance **" in text
    assert "rank " in text and "of 16" in text


def _with_report(monkeypatch, fails: bool) -> None:
    """Pretend the run's report measured every method: all pass, or all fail."""
    from ui import results

    fig = {"fails": fails, "top1_agreement": 0.1 if fails else 0.95, "copies": 4,
           "copy_top1": 1.0, "seeds": 64, "seconds_median": 3.0}
    real = results.methods
    monkeypatch.setattr(results, "methods", lambda key, combine: (
        lambda d, order, _: (d, order, dict.fromkeys(order, fig)))(*real(key, combine)))


def _with_null(monkeypatch, scale: float, count: int) -> None:
    """Make attribute() score `count` phantoms at `scale` x each row's score."""
    import dataclasses

    import tda.attribution as attribution

    real = attribution.attribute

    def fake(explorer, seed, method=None, **kw):
        att = real(explorer, seed, method, **kw)
        ramp = np.linspace(0.5, 1.0, count).astype(np.float32) * scale
        nulls = {k: (ramp * np.nanmax(np.abs(v)) if att.nulls_by[k].ndim == 1 else
                     np.abs(v)[:, None] * ramp[None]) for k, v in att.scores_by.items()}
        return dataclasses.replace(att, nulls_by=nulls)

    monkeypatch.setattr(attribution, "attribute", fake)
    # the fake lives in this process: run the jobs here, not in worker processes
    from tests.conftest import InlinePool
    from ui import compute

    inline = compute.Pools(InlinePool(), InlinePool())
    monkeypatch.setattr(compute, "pools", lambda: inline)


def test_attribution_says_when_no_image_explains_the_sample(app_env, sheets, monkeypatch):
    _with_null(monkeypatch, scale=10.0, count=200)
    _with_report(monkeypatch, fails=False)
    at = open_app("attribution")
    at.number_input(key="seed").set_value(11).run()  # a seed no other test attributes
    _check_attribution_page(at, sheets)
    assert any("No training image explains this sample" in i.value for i in at.info)
    badges = [s for s in markdown(at) if "-badge[" in s]
    assert all(b.startswith(":gray-badge[within noise (p = 1.00") for b in badges)


def test_attribution_marks_images_above_the_noise_floor(app_env, sheets, monkeypatch):
    _with_null(monkeypatch, scale=0.01, count=200)
    _with_report(monkeypatch, fails=False)
    at = open_app("attribution")
    at.number_input(key="seed").set_value(12).run()
    at.segmented_control(key="score").set_value("magnitude").run()  # the tiny run copies
    _check_attribution_page(at, sheets)  # nothing: its resemblance scores are all 0
    assert not any("No training image explains" in i.value for i in at.info)
    assert any("passes" in c.value and "top-1 agrees 95%" in c.value for c in at.caption)
    badges = [s for s in markdown(at) if "-badge[" in s]
    positive = [b for b in badges if ":green-badge[" in b and "above noise floor (q = 0.0" in b]
    assert positive and all(b in positive or ":gray-badge[" in b for b in badges)


def test_a_method_that_fails_against_exact_gets_no_floor_badge(app_env, sheets, monkeypatch):
    _with_null(monkeypatch, scale=0.01, count=200)  # every row far above its floor ...
    _with_report(monkeypatch, fails=True)  # ... but the method fails against exact here
    at = open_app("attribution")
    at.number_input(key="seed").set_value(12).run()
    _check_attribution_page(at, sheets)
    assert any("fails under" in w.value and "top-1 agrees 10%" in w.value for w in at.warning)
    badges = [s for s in markdown(at) if "-badge[" in s]
    assert all("no badge: this method fails against exact here" in b for b in badges)
    assert "(fails: top-1 10%)" in _method(at).format_func("screened")


def test_runs_are_discovered_under_assets_and_tda_runs(tmp_path, monkeypatch):
    def fake_run(path: Path) -> None:
        path.mkdir(parents=True)
        (path / "ensemble.json").write_text("{}")

    assets, mine = tmp_path / "assets", tmp_path / "mine"
    fake_run(mine / "a")
    fake_run(mine / "group" / "b")
    fake_run(mine / ".hidden" / "c")
    fake_run(mine / "1" / "2" / "3" / "too-deep")
    (mine / "unfinished").mkdir()
    fake_run(assets / "other")
    monkeypatch.setenv("TDA_ASSETS", str(assets))
    monkeypatch.setenv("TDA_RUNS", str(mine))
    assert list(runs.discover_runs()) == ["assets/other", "mine/a", "mine/group/b"]

    fake_run(assets / "default")  # the shipped run comes first whenever it exists
    found = runs.discover_runs()
    assert list(found)[0] == "assets/default"
    assert found["assets/default"] == str((assets / "default").resolve())

    monkeypatch.delenv("TDA_RUNS")
    assert list(runs.discover_runs()) == ["assets/default", "assets/other"]


def test_random_seed_button(app_env):
    at = open_app("ablation")
    dice = next(b for b in at.button if b.label == ":material/casino:")
    for _ in range(3):  # a draw of 0 (the start) is possible but not three times in a row
        dice.click().run()
        if at.number_input(key="seed").value != 0:
            break
    seed = at.number_input(key="seed").value
    assert 0 < seed <= 99_999
    assert captions(at)[0] == f"full ensemble (seed {seed})"


def test_attribution_compares_with_exact_on_request(app_env):
    at = open_app("attribution")
    at.number_input(key="seed").set_value(13).run()
    assert "Spearman ρ vs exact" not in metrics(at)
    _method(at).set_value("jacobian").run()
    at.segmented_control(key="score").set_value("magnitude").run()
    next(b for b in at.button if b.label == "Compute exact scores to compare").click().run()
    assert not at.exception
    rho = float(metrics(at)["Spearman ρ vs exact"])
    assert -1.0 <= rho <= 1.0 and len(charts_after_toggles(at)) == 3
    assert not [b for b in at.button if b.label == "Compute exact scores to compare"]


# -- shareable views -----------------------------------------------------------------------


def open_link(page: str, **params) -> AppTest:
    """The page at URL path `page` opened from a link with query string `params`."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.query_params.update(params)
    at.run()
    if page:
        at.switch_page(BY_URL[page].path).run()
    assert not at.exception, at.exception
    return at


def test_a_link_opens_its_view_and_the_url_follows(app_env):
    label = f"{app_env.parent.name}/tiny"
    at = open_link("generate", run="tiny", seed="3", combine="mixture")
    assert choice(at, "run").value == label
    assert at.number_input(key="seed").value == 3
    assert at.segmented_control(key="combine").value == "mixture"
    assert at.subheader[0].value == "Sample of seed 3" and not at.warning
    assert at.query_params == {"run": label, "seed": "3", "combine": "mixture"}
    charts = charts_after_toggles(at)
    assert any("Which members the sample followed" in c for c in charts)  # mixture only
    mixture = images(at)[0].url

    at.segmented_control(key="combine").set_value("mean").run()
    assert images(at)[0].url != mixture  # another rule, another sample, same noise
    at.number_input(key="seed").set_value(4).run()
    assert at.query_params == {"run": label, "seed": "4", "combine": "mean"}
    links = [link.proto for link in at.get("page_link")]
    assert all("seed=4" in link.query_string for link in links)  # every link shares the view

    at.switch_page(BY_URL["ablation"].path).run()  # rule and seed carry over to other pages
    assert at.segmented_control(key="combine").value == "mean"
    assert captions(at)[0] == "full ensemble (seed 4)"


def test_the_rule_defaults_to_the_runs_own(app_env):
    at = open_app("generate")
    assert at.segmented_control(key="combine").value == "mean"  # the tiny run's rule
    assert at.segmented_control(key="combine").options == ["mean", "mixture"]
    assert "mixture: weight members" in at.segmented_control(key="combine").proto.help


def test_a_page_that_computes_draws_no_raw_html(app_env):
    """A seed that is not precomputed: the page waits with Streamlit's own spinner or
    progress bar, and draws no style sheet of its own."""
    at = open_app("generate")
    assert not at.exception and not [m for m in at.markdown if m.proto.allow_html]


def test_a_choice_clicked_off_keeps_its_option(app_env):
    at = open_app("generate")
    at.segmented_control(key="combine").set_value("mixture").run()
    at.segmented_control(key="combine").set_value(None).run()  # clicked off again
    assert at.segmented_control(key="combine").value == "mixture"
    assert at.query_params["combine"] == "mixture" and not at.exception
    at.switch_page(BY_URL["ablation"].path).run()
    assert at.segmented_control(key="combine").value == "mixture"


def test_many_runs_are_a_select_box(app_env, monkeypatch):
    monkeypatch.setattr(sidebar, "CHOICE_BUTTONS", 0)  # as if the server had many runs
    at = open_app("generate")
    assert at.selectbox(key="run").value == f"{app_env.parent.name}/tiny"
    assert not at.exception


@pytest.mark.parametrize(
    "params, warned",
    [
        ({"seed": "-1"}, "seed is not a whole number"),
        ({"seed": "1e9"}, "seed is not a whole number"),
        ({"seed": "99999999999"}, "seed is not a whole number"),
        ({"run": "../../../etc/passwd"}, "a run this server does not have"),
        ({"run": "x" * 10_000}, "a run this server does not have"),
        ({"combine": "<img src=x onerror=alert(1)>"}, "rule is not one of mean, mixture"),
    ],
)
def test_a_hostile_link_gets_a_message_and_the_default_view(app_env, params, warned):
    at = open_link("", **params)  # the messages show on the link's page (Home here)
    assert len(at.warning) == 1 and warned in at.warning[0].value
    assert next(iter(params.values())) not in at.warning[0].value  # never repeated back
    assert at.number_input(key="seed").value == 0 and at.segmented_control(key="combine").value == "mean"
    assert at.query_params == {"run": f"{app_env.parent.name}/tiny", "seed": "0", "combine": "mean"}
    at.switch_page(BY_URL["generate"].path).run()
    assert at.subheader[0].value == "Sample of seed 0" and not at.warning  # said once


# -- a shared server: limits, no server paths, uploads ---------------------------------------


def shown(at: AppTest) -> str:
    """Everything the page sent to the browser (main area and sidebar), as text."""
    out = []

    def walk(node) -> None:
        if getattr(node, "proto", None) is not None:
            out.append(str(node.proto))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    return "\n".join(out)


def assert_no_server_path(at: AppTest, *paths: Path) -> None:
    text = shown(at)
    for p in (ROOT, *paths):
        assert str(p) not in text, f"{p} shown on the page"


def test_no_page_shows_a_server_path(app_env, tiny_run_copy, tmp_path, monkeypatch):
    base = app_env.parent.parent  # pytest's temporary root, above every run
    for url in BY_URL:
        at = open_app(url)
        assert_no_server_path(at, base)
    # Diagnostics with a saved report, and with a damaged one
    monkeypatch.setenv("TDA_RUNS", str(tiny_run_copy.parent))
    (tiny_run_copy / "report").mkdir()
    (tiny_run_copy / "report" / "report.json").write_text('{"complete": true}')
    at = open_app("diagnostics")
    assert "Saved report: `report/report.json` of run" in " ".join(c.value for c in at.caption)
    assert_no_server_path(at, base)
    (tiny_run_copy / "report" / "report.json").write_text("{not json")
    at = open_app("diagnostics")
    assert "it is damaged" in at.error[0].value
    assert_no_server_path(at, base)


def test_a_broken_run_names_the_file_not_the_server_path(tiny_run_copy, tmp_path, monkeypatch):
    (tiny_run_copy / "members" / "03" / "config.json").unlink()
    monkeypatch.setenv("TDA_RUNS", str(tiny_run_copy.parent))
    monkeypatch.setenv("TDA_ASSETS", str(tmp_path / "no-assets"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert "members/03/config.json" in at.error[0].value and "missing" in at.error[0].value
    assert f"run **{tiny_run_copy.parent.name}/tiny**" in at.error[0].value.replace(
        "Cannot open ", ""
    )
    assert_no_server_path(at, tmp_path)


def test_operator_limits_apply(app_env, monkeypatch):
    monkeypatch.setenv("TDA_MAX_TOPK", "5")
    at = open_app("attribution")
    assert at.slider(key="topk").max == 5 and at.slider(key="topk").value == 5
    monkeypatch.setenv("TDA_MAX_STEPS", "5")  # the tiny run samples with 10
    at = open_app()
    assert "samples with 10 steps; this server runs at most 5" in at.error[0].value
    assert not at.metric


def _with_header_size(data: bytes, width: int, height: int) -> bytes:
    import struct
    import zlib

    ihdr = bytearray(data[8:33])
    ihdr[8:16] = struct.pack(">II", width, height)
    ihdr[21:25] = struct.pack(">I", zlib.crc32(bytes(ihdr[4:21])))
    return data[:8] + bytes(ihdr) + data[33:]


def test_uploads_refuse_bombs_and_truncated_files(app_env, tiny_explorer, sheets):
    at = open_app("training_set")
    image = _png(tiny_explorer.run.images[3], size=64)
    bomb = _with_header_size(image, 60_000, 60_000)  # 3.6e9 pixels in a 300-byte file
    at.file_uploader(key="upload").set_value(("bomb.png", bomb, "image/png")).run()
    assert not at.exception
    assert "more pixels than this app opens" in at.error[0].value
    at.file_uploader(key="upload").set_value(("cut.png", image[: len(image) // 2], "image/png"))
    at.run()
    assert not at.exception and "truncated" in at.error[0].value
    assert all("your image, converted" not in caps for _, caps in sheets)


def test_a_full_queue_refuses_with_a_message(app_env, monkeypatch):
    """Every lane full: a page that needs a chain says the server is busy and stops,
    instead of waiting without end."""
    from tda.pool import Busy
    from ui import compute

    class Full:
        def submit(self, job):
            raise Busy("every place taken")

        def result(self, key, default=None):
            return default

    monkeypatch.setattr(compute, "pools", lambda: compute.Pools(Full(), Full()))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.query_params["seed"] = "4321"
    at.run()
    assert not at.exception, at.exception
    assert any(compute.BUSY in w.value for w in at.warning)
