"""The ladder: rungs read from manifests and reports, the TAR curve beside the paper's,
and the Ladder page, which shows one seed on every rung and switches the app to a rung."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tda.candidate import PAPER_TAR
from tda.ensemble import load_run
from tda.ladder import rungs, table, tar_curve, tar_picture
from ui.nav import BY_URL

ROOT = Path(__file__).resolve().parent.parent


def found(root: Path) -> dict[str, str]:
    return {p.name: str(p) for p in sorted(root.iterdir())}


def test_rungs_come_from_manifests_and_reports(tiny_ladder_dir, tmp_path):
    rows = rungs(found(tiny_ladder_dir))
    assert [r["N"] for r in rows] == [16, 20]
    assert rows[0]["recipe"] == rows[1]["recipe"]  # one recipe, N apart
    for r in rows:
        run = load_run(r["path"])
        assert (r["n"], r["h"]) == (run.n, run.h)
        assert r["per_member"] == pytest.approx(run.codes.sum(0).mean())  # N h / n
        saved = json.loads((Path(r["path"]) / "report" / "report.json").read_text())
        cand = saved["candidate"]["rules"][r["rule"]]
        assert (r["tar"], r["tar_low"], r["tar_high"]) == (
            cand["tar"], cand["tar_low"], cand["tar_high"])
        assert r["copies"] == cand["share_copies"] and r["samples"] == 8
        others = {k: v for k, v in saved["candidate"]["rules"].items() if k != r["rule"]}
        assert {k: v["tar"] for k, v in r["other_rules"].items()} == {
            k: v["tar"] for k, v in others.items()}
    assert not rows[0]["other_rules"] and table(rows)[0]["other rule"] == "—"
    (rule, other), = rows[1]["other_rules"].items()  # tiny20 has both rules
    assert table(rows)[1]["other rule"] == (
        f"{other['tar']:.2f} ({other['tar_low']:.2f}–{other['tar_high']:.2f}), 6 samples, {rule}")
    # a folder that is no run is left out; a run without a (readable) report has no TAR
    (tmp_path / "not-a-run").mkdir()
    shutil.copytree(tiny_ladder_dir / "tiny20", tmp_path / "tiny20")
    (tmp_path / "tiny20" / "report" / "report.json").write_text("{broken")
    rows = rungs(found(tmp_path))
    assert [(r["label"], r["tar"]) for r in rows] == [("tiny20", None)]
    assert table(rows)[0]["TAR"] == "not measured"


def test_tar_curve_draws_ours_beside_the_papers(tiny_ladder_dir):
    rows = rungs(found(tiny_ladder_dir))
    fig = tar_curve(rows, current="tiny20")
    paper, ours = fig.data[0], fig.data[1]
    assert list(paper.x) == sorted(PAPER_TAR) and list(paper.y) == [PAPER_TAR[N] for N in paper.x]
    assert list(ours.x) == [16, 20] and list(ours.y) == [r["tar"] for r in rows]
    assert list(fig.data[2].x) == [20]  # the current rung, ringed
    im = tar_picture(rows, current="tiny20")
    assert im.size == (760, 330)
    pixels = np.asarray(im)
    assert (pixels == [33, 102, 172]).all(-1).sum() > 100  # our recipe's blue is drawn
    rows_table = table(rows)
    assert rows_table[1]["images per member"].startswith("10 (paper: 10)")


@pytest.fixture
def ladder_env(tiny_ladder_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TDA_RUNS", str(tiny_ladder_dir))
    monkeypatch.setenv("TDA_ASSETS", str(tmp_path / "no-assets"))
    return tiny_ladder_dir


def test_ladder_page_shows_one_seed_on_every_rung_and_switches_the_app(ladder_env, monkeypatch):
    from tda import pictures

    drawn: list = []
    real = pictures.contact_sheet
    monkeypatch.setattr(pictures, "contact_sheet", lambda images, captions, *a, **k:
                        drawn.append(list(captions)) or real(images, captions, *a, **k))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    # the run picker lists the rungs by N, with N shown
    picker = next(w for w in (*at.segmented_control, *at.selectbox) if w.key == "run")
    root = ladder_env.name
    assert list(picker.options) == [f"N = 16 · {root}/tiny16", f"N = 20 · {root}/tiny20"]
    at.switch_page(BY_URL["ladder"].path).run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Ladder"
    sheet = drawn[-1]
    assert sheet[:2] == ["N = 16: sample", "N = 20: sample"]
    assert all(c.startswith("#") and "L2" in c for c in sheet[2:])
    shown = " ".join(m.value for m in at.markdown)
    for r in rungs(found(ladder_env)):  # the table: every rung's TAR and interval
        assert (f"{r['tar']:.2f} ({r['tar_low']:.2f}–{r['tar_high']:.2f}), 8 samples, "
                f"{r['rule']}") in shown
    current = at.session_state["run"]
    other = next(b for b in at.button if b.key.startswith("rung_") and not b.disabled)
    assert other.key != f"rung_{current}"
    other.click().run()
    assert not at.exception, at.exception
    switched = at.session_state["run"]
    assert switched != current and f"rung_{switched}" == other.key
    assert next(b for b in at.button if b.key == other.key).disabled  # now the open rung
    at.switch_page(BY_URL["generate"].path).run()  # every page follows
    assert at.session_state["run"] == switched
    N = 20 if switched.endswith("tiny20") else 16
    assert f"N = {N} images" in " ".join(c.value for c in at.sidebar.caption)
