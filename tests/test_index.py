"""FAISS index of the training set against brute-force numpy nearest neighbours."""

from __future__ import annotations

import numpy as np
import pytest

from tda import TdaError
from tda.ensemble import INDEX, load_run
from tda.index import as_vectors, build_index, load_index, save_index, search


def _brute_force(train: np.ndarray, queries: np.ndarray, k: int):
    d = ((queries[:, None, :] - train[None, :, :]) ** 2).sum(-1)  # [Q, M] squared L2
    rows = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, rows, axis=1), rows


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, (60, 1, 8, 8), dtype=np.uint8)


def test_search_equals_brute_force(images):
    rng = np.random.default_rng(1)
    index = build_index(images)
    queries = rng.uniform(-1, 1, (9, 1, 8, 8)).astype(np.float32)  # model space
    train_v = images.reshape(60, -1).astype(np.float64) / 255.0
    query_v = (queries.reshape(9, -1).astype(np.float64) + 1.0) / 2.0
    d, rows = search(index, queries, 7)
    bd, brows = _brute_force(train_v, query_v, 7)
    assert rows.shape == d.shape == (9, 7)
    assert np.array_equal(rows, brows)
    np.testing.assert_allclose(d, bd, rtol=1e-5, atol=1e-5)


def test_uint8_queries_find_themselves(images):
    index = build_index(images)
    d, rows = search(index, images[[4, 17, 59]], 3)
    assert rows[:, 0].tolist() == [4, 17, 59]
    np.testing.assert_allclose(d[:, 0], 0.0, atol=1e-6)
    assert (d[:, 1] > 0).all()


def test_k_is_capped_at_the_index_size(images):
    d, rows = search(build_index(images[:5]), images[:2], 50)
    assert rows.shape == (2, 5) and sorted(rows[0].tolist()) == list(range(5))


def test_vectors_are_in_unit_range():
    u = as_vectors(np.array([[[[0, 255]]]], dtype=np.uint8))
    f = as_vectors(np.array([[[[-1.0, 1.0, 3.0]]]], dtype=np.float32))
    assert u.tolist() == [[0.0, 1.0]] and f.tolist() == [[0.0, 1.0, 1.0]]


def test_saved_index_round_trip_and_checks(images, tmp_path):
    save_index(tmp_path, build_index(images))
    index = load_index(tmp_path, images)
    assert index.ntotal == 60 and index.d == 64
    assert np.array_equal(search(index, images[:3], 1)[1][:, 0], [0, 1, 2])
    with pytest.raises(TdaError, match=INDEX):
        load_index(tmp_path, images[:10])
    with pytest.raises(TdaError, match="missing"):
        load_index(tmp_path / "elsewhere", images)


def test_run_index_matches_its_training_images(tiny_run_dir):
    run = load_run(tiny_run_dir)
    index = load_index(tiny_run_dir, run.images)
    d, rows = search(index, run.images, 1)
    np.testing.assert_allclose(d[:, 0], 0.0, atol=1e-6)
    assert np.array_equal(run.images[rows[:, 0]], run.images)
