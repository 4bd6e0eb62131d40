"""tda.views: crisp upscaling, the diverging residual map, and the plotly figures."""

from __future__ import annotations

import numpy as np
import torch

from tda import views


def test_to_image_upscales_by_whole_factor_with_sharp_pixels():
    x = torch.tensor([[[-1.0, 1.0], [0.0, -1.0]]])  # [1, 2, 2] in model space
    im = views.to_image(x, size=9)  # largest whole factor: 4
    a = np.asarray(im)
    assert im.size == (8, 8) and a.dtype == np.uint8
    assert (a[:4, :4] == 0).all() and (a[:4, 4:] == 255).all()
    assert (a[4:, :4] == 128).all() and (a[4:, 4:] == 0).all()  # no blending at the edges


def test_to_image_accepts_uint8_and_rgb():
    u = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4)
    im = views.to_image(u, size=16)
    assert im.mode == "RGB" and im.size == (16, 16)
    assert np.asarray(im)[0, 0].tolist() == u[:, 0, 0].tolist()


def test_residual_map_is_white_at_zero_and_symmetric():
    r = np.array([[[-2.0, 0.0, 2.0]]])
    a = np.asarray(views.residual_image(r, size=3))
    blue, white, red = a[0, 0], a[0, 1], a[0, 2]
    assert white.tolist() == [247, 247, 247]
    assert blue[2] > blue[0] and red[0] > red[2]  # negative blue, positive red
    half = np.asarray(views.residual_image(r, size=3, vmax=4.0))
    assert abs(int(half[0, 0].sum()) - int(white.sum())) < abs(int(blue.sum()) - int(white.sum()))


def test_residual_scale_never_zero():
    assert views.residual_scale(np.zeros((1, 2, 2))) == 1.0
    assert views.residual_scale(np.array([-3.0, 1.0])) == 3.0


def test_bits_and_members():
    code = np.array([1, 0, 1, 1, 0], dtype=np.uint8)
    assert views.bits(code) == "10110" and views.members_of(code) == [0, 2, 3]


def test_figures():
    codes = np.array([[1, 0, 1], [0, 1, 1]], dtype=np.uint8)
    fig = views.code_matrix_figure(codes, np.array([3, 7]))
    assert fig.data[0].z.shape == (3, 2)  # members down, images across
    diag = views.counterfactual_diagram(codes[0], 0)
    assert np.allclose(diag.data[0].z[1], [0.0, 1.0, 0.0])  # only member 1 never saw image 0

    real, phantom = np.array([0.1, 0.2, 0.3]), np.array([0.15, 0.25])
    hist = views.score_histogram(real, phantom, "exact")
    assert len(hist.data) == 2 and hist.data[0].xbins == hist.data[1].xbins  # shared bins
    assert len(views.score_histogram(real, np.zeros(0), "nearest").data) == 1

    sc = views.scatter_figure(real, real * 2, "exact", "jacobian", "t", highlight=[2])
    assert list(sc.data[1].x) == [0.3] and len(sc.data[0].x) == 2


def test_floor_finding_reads_report_then_floor_json(tmp_path):
    import json

    from tda.views import floor_finding

    assert floor_finding(tmp_path) is None
    floor = {
        "floor": [
            {
                "share_seeds_top1_above_p99": 0.75,  # 12 of 16
                "median_top1_ratio": 1.02,
                "median_real": 1.396,
                "median_phantom": 1.393,
                "n_seeds": 16,
                "N": 512,
            }
        ]
    }
    (tmp_path / "floor.json").write_text(json.dumps(floor))
    level, text = floor_finding(tmp_path)
    # 12 of 16 seeds, but the largest of 512 phantom-like scores passes p99 99% of the time
    assert level == "weak" and "12 of 16 seeds" in text and "chance alone: 99%" in text
    (tmp_path / "report").mkdir()
    nf = {
        "share_top1_above_p99": 0.875,
        "median_top1_ratio": 1.8,
        "real_median": 2.0,
        "phantom_median": 1.0,
        "ks_pvalue": 1e-6,
        "per_seed": [{}] * 8,
    }
    report = {"attribution": {"N": 16, "noise_floor": nf}}  # the layout `evaluate` writes
    (tmp_path / "report" / "report.json").write_text(json.dumps(report))
    level, text = floor_finding(tmp_path)
    assert level == "ok" and "7 of 8 seeds" in text and "chance alone: 15%" in text
    nf["share_top1_above_p99"] = 0.625  # 5 of 8: under 3 in 4, yet far above chance
    (tmp_path / "report" / "report.json").write_text(json.dumps(report))
    level, text = floor_finding(tmp_path)
    assert level == "partly" and "5 of 8 seeds" in text
    nf.update(share_top1_above_p99=0.125, ks_pvalue=0.6)  # 1 of 8, distributions alike
    (tmp_path / "report" / "report.json").write_text(json.dumps(report))
    assert floor_finding(tmp_path)[0] == "weak"
    nf.update(ks_pvalue=1e-4)  # real scores measurably above phantom ones
    (tmp_path / "report" / "report.json").write_text(json.dumps(report))
    assert floor_finding(tmp_path)[0] == "partly"


def test_tar_finding_reads_the_candidate_part_and_grades_it(tmp_path):
    import json

    assert views.tar_finding(tmp_path) is None
    rules = {
        "mixture": {"tar": 0.9, "tar_low": 0.8, "tar_high": 0.97, "p_change_candidate": 0.95,
                    "p_change_random": 0.4, "share_copies": 0.9, "samples": 200},
        "mean": {"tar": 0.3, "tar_low": 0.1, "tar_high": 0.5, "p_change_candidate": 0.6,
                 "p_change_random": 0.5, "share_copies": 0.1, "samples": 200},
    }
    report = {"run": {"N": 256}, "candidate": {"default_rule": "mixture", "rules": rules}}
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "report.json").write_text(json.dumps(report))
    f = views.tar_finding(tmp_path)
    assert f["level"] == "ok" and f["paper"] == (256, 1.0) and "TAR = 0.90" in f["text"]
    report["candidate"]["default_rule"] = "mean"
    (tmp_path / "report" / "report.json").write_text(json.dumps(report))
    assert views.tar_finding(tmp_path)["level"] == "partly"
    assert views.paper_tar(16) is None and views.paper_tar(900) == (1024, 0.85)
