"""Seed placement: the reference PolicyPeaks, determinism, masks, the seed file."""

import numpy as np
import pytest

from ffnflow.errors import InputError
from ffnflow.seeds import place_seeds, read_seeds_csv, sobel_peak_seeds, write_seeds_csv


def blobs_image(shape=(40, 48, 48), seed=0):
    """Bright balls on a dark background with a little noise (normalised intensities)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    image = np.full(shape, -1.0, dtype=np.float32)
    centres = [(12, 12, 12), (12, 34, 30), (28, 20, 34), (28, 36, 12)]
    for c in centres:
        image[(z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= 7**2] = 1.0
    return image + rng.normal(0, 0.05, shape).astype(np.float32), centres


def test_seeds_are_deterministic_sorted_and_inside_objects():
    image, centres = blobs_image()
    a = sobel_peak_seeds(image)
    b = sobel_peak_seeds(image.copy())
    assert np.array_equal(a, b)
    assert a.dtype == np.int64 and a.shape[1] == 3
    assert [tuple(s) for s in a] == sorted(tuple(s) for s in a)
    # Every ball gets a seed near its centre, far from its boundary.
    for c in centres:
        assert np.min(np.linalg.norm(a - np.array(c), axis=1)) <= 2.0


def test_global_random_state_is_untouched():
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    sobel_peak_seeds(blobs_image()[0])
    assert np.random.random() == expected


def test_mask_keeps_seeds_out():
    image, centres = blobs_image()
    mask = np.zeros(image.shape, dtype=bool)
    mask[:20] = True  # covers the balls at z = 12
    seeds = place_seeds(image, mask=mask)
    assert len(seeds) and not mask[tuple(seeds.T)].any()
    for c in centres[2:]:
        assert np.min(np.linalg.norm(seeds - np.array(c), axis=1)) <= 2.0


def test_unknown_policy_and_bad_image_are_errors():
    with pytest.raises(InputError, match="seeds.policy"):
        place_seeds(np.zeros((5, 5, 5), np.float32), policy="grid")
    with pytest.raises(InputError, match="3D"):
        sobel_peak_seeds(np.zeros((5, 5), np.float32))


def test_seed_csv_round_trip_and_errors(tmp_path):
    seeds = np.array([[1, 2, 3], [40, 50, 60]])
    path = tmp_path / "seeds.csv"
    write_seeds_csv(path, seeds)
    assert path.read_text().splitlines()[0] == "z,y,x"
    assert np.array_equal(read_seeds_csv(path), seeds)
    write_seeds_csv(path, np.zeros((0, 3)))
    assert read_seeds_csv(path).shape == (0, 3)
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y,z\n1,2,3\n")
    with pytest.raises(InputError, match="bad.csv.*header"):
        read_seeds_csv(bad)
    bad.write_text("z,y,x\n1,2,a\n")
    with pytest.raises(InputError, match="bad.csv.*non-integer"):
        read_seeds_csv(bad)
