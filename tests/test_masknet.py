"""The mask net: targets, defects, training, block-independent prediction, and its use as
a mask for seeds and flood filling."""

import json

import h5py
import numpy as np
import pytest
import torch

from ffnflow.config import dataset_config, validate_config
from ffnflow.errors import InputError
from ffnflow.ffn.canvas import Canvas, InferenceOptions
from ffnflow.masknet.defects import DEFECT_KINDS, inject_defects
from ffnflow.masknet.model import MaskNet, MaskNetArch, load_masknet, save_masknet
from ffnflow.masknet.prediction import predict_roi, quantize, read_reflected, tiles
from ffnflow.masknet.targets import boundary_target, label_interfaces
from ffnflow.masknet.training import (
    TrainingOptions,
    TrainingVolume,
    draw_sample,
    step_sample,
    train_masknet,
)
from ffnflow.seeds import masknet_peak_seeds, place_seeds
from ffnflow.stages.common import ffn_inputs, fill_excluded, read_movement_mask
from ffnflow.stages.mask import run_gather_mask, run_predict_mask, run_train_masknet
from ffnflow.stages.seeds import run_place_seeds
from ffnflow.volumes import Roi, write_volume
from tests.conftest import tube_image
from tests.test_canvas import OPTIONS, OraclePredictor, RecordingCanvas


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and the tests share the machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cells(shape=(24, 32, 32), n=12, seed=0):
    """Voronoi cells (labels 1..n) and an EM-like image: bright cells, dark membranes."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 1, (n, 3)) * shape
    grid = np.stack(np.indices(shape), -1).reshape(-1, 1, 3)
    labels = (np.argmin(((grid - centres) ** 2).sum(-1), axis=1) + 1).reshape(shape)
    raw = np.where(boundary_target(labels), 60.0, 180.0) + rng.normal(0, 10, shape)
    return np.clip(raw, 0, 255).astype(np.uint8), labels.astype(np.uint32)


def tiny_model(levels=3, classes=("boundary", "exclude")):
    torch.manual_seed(0)
    return MaskNet(MaskNetArch(features=4, levels=levels, classes=classes)).eval()


# -- targets and defects -------------------------------------------------------------------


def test_boundary_target_is_label_interfaces_dilated_and_ignores_label_zero():
    labels = np.zeros((1, 1, 9), np.uint32)
    labels[..., :4], labels[..., 4:7] = 1, 2  # 1 1 1 1 2 2 2 0 0
    assert label_interfaces(labels)[0, 0].tolist() == [0, 0, 0, 1, 1, 0, 0, 0, 0]
    assert boundary_target(labels)[0, 0].tolist() == [0, 0, 1, 1, 1, 1, 0, 0, 0]


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_each_defect_kind_changes_the_image_where_it_is_excluded(kind):
    raw, labels = cells((20, 40, 40))
    image = raw.astype(np.float32)
    for seed in range(4):
        d = inject_defects(image, np.random.default_rng(seed), [kind], labels)
        assert d.exclude.any() and not d.exclude.all(), kind
        assert np.array_equal(d.kinds > 0, d.exclude)
        assert set(np.unique(d.kinds[d.exclude])) == {DEFECT_KINDS.index(kind) + 1}
        changed = np.abs(d.image - image) > 1e-3
        if kind == "shifted_sections":
            # Image and labels move together; the sections at each jump are excluded.
            z = np.flatnonzero(changed.any(axis=(1, 2)))
            assert d.exclude[z[0] - 1].all() and d.exclude[z[0]].all()
            assert np.array_equal(
                d.labels[z], np.roll(labels[z], tuple(_shift(d, image, z[0])), (1, 2))
            )
        else:
            assert not changed[~d.exclude].any(), kind
            assert changed[d.exclude].mean() > 0.9, kind
            assert np.array_equal(d.labels, labels)
        if kind in ("blank_section", "dark_section", "knife_chatter"):
            z = np.flatnonzero(d.exclude.any(axis=(1, 2)))
            assert d.exclude[z].all(), "whole sections"
        if kind == "zero_padding":
            assert (d.image[d.exclude] == 0).all()


def _shift(d, image, z):
    for dy in range(-12, 13):
        for dx in range(-12, 13):
            if np.array_equal(d.image[z], np.roll(image[z], (dy, dx), (0, 1))):
                return dy, dx
    raise AssertionError("no shift reproduces the section")


def test_unknown_defect_kind_is_named():
    with pytest.raises(InputError, match="cracks"):
        inject_defects(np.zeros((4, 4, 4)), np.random.default_rng(0), ["cracks"])


def test_training_sample_targets_follow_the_augmented_image():
    raw, labels = cells()
    volume = TrainingVolume("v", raw, labels, None, 128.0, 33.0)
    options = TrainingOptions(patch_zyx=(16, 16, 16), defect_probability=0.0)
    for seed in range(6):
        s = draw_sample(volume, options, np.random.default_rng(seed))
        membrane = s.target[0] > 0
        assert s.image[0][membrane].mean() < s.image[0][~membrane].mean() - 1.0
        assert not s.target[1].any() and s.weight[0].all()


# -- training ------------------------------------------------------------------------------


def tiny_training(**options):
    """A training volume of Voronoi cells and options for a tiny, fast model."""
    raw, labels = cells()
    volume = TrainingVolume("v", raw, labels, None, 128.0, 33.0)
    base = {"patch_zyx": (16, 16, 16), "features": 4, "levels": 2, "defect_probability": 0.0}
    return volume, TrainingOptions(**{**base, **options})


def test_training_loss_falls_and_resume_is_exact(tmp_path):
    torch.set_num_threads(1)
    volume, options = tiny_training(
        steps=40, learning_rate=0.01, checkpoint_every=5, validate_every=20, validation_patches=1
    )
    out = {k: tmp_path / k for k in ("m.pt", "log.csv", "loss.png", "state.pt")}
    rows = train_masknet([volume], options, *out.values(), (10, 10, 10))
    loss = np.array([r["loss"] for r in rows])
    assert loss[-10:].mean() < 0.7 * loss[:10].mean()
    assert out["log.csv"].read_text().startswith("step,wall_s,lr,loss")
    assert out["loss.png"].read_bytes()[:4] == b"\x89PNG"
    loaded = load_masknet(out["m.pt"])
    assert loaded.classes == ("boundary", "exclude") and loaded.resolution_nm == (10, 10, 10)
    assert loaded.normalization == {"image_mean": 128.0, "image_stddev": 33.0}

    # Interrupted after 7 steps (last state at 5), resumed: the same weights as one run.
    short = TrainingOptions(**{**options.__dict__, "steps": 12})
    a = {k: tmp_path / f"a_{k}" for k in out}
    b = {k: tmp_path / f"b_{k}" for k in out}
    train_masknet([volume], short, *a.values(), (10, 10, 10))
    train_masknet([volume], short, *b.values(), (10, 10, 10), stop_after=7)
    state = torch.load(b["state.pt"], weights_only=False)
    assert state["step"] == 7 and not b["m.pt"].exists()
    train_masknet([volume], short, *b.values(), (10, 10, 10))
    wa, wb = load_masknet(a["m.pt"]).model.state_dict(), load_masknet(b["m.pt"]).model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_defect_kind_weights_choose_what_is_drawn():
    raw, labels = cells()
    volume = TrainingVolume("v", raw, labels, None, 128.0, 33.0)
    kinds = ("blank_section", "dark_section", "knife_chatter")
    plain = TrainingOptions(patch_zyx=(16, 16, 16), defect_probability=1.0, defect_kinds=kinds)
    weighted = TrainingOptions(
        patch_zyx=(16, 16, 16),
        defect_probability=1.0,
        defect_kinds=kinds,
        defect_kind_weights={"dark_section": 0, "knife_chatter": 0},
    )
    assert weighted.kind_probabilities() == [1.0, 0.0, 0.0]
    drawn = {
        name: {
            int(k)
            for step in range(12)
            for k in np.unique(step_sample([volume], options, step).kinds)
            if k
        }
        for name, options in (("plain", plain), ("weighted", weighted))
    }
    index = {k: DEFECT_KINDS.index(k) + 1 for k in kinds}
    assert drawn["weighted"] == {index["blank_section"]}
    assert drawn["plain"] == set(index.values())
    with pytest.raises(InputError, match="cracks"):
        TrainingOptions(defect_kind_weights={"cracks": 1.0})
    with pytest.raises(InputError, match="weighs 0"):
        TrainingOptions(defect_kinds=("blank_section",), defect_kind_weights={"blank_section": 0})


def test_training_starts_from_init_checkpoint(tmp_path):
    torch.set_num_threads(1)
    volume, options = tiny_training(steps=6, validate_every=0)
    first = {k: tmp_path / f"first_{k}" for k in ("m.pt", "log.csv", "loss.png", "state.pt")}
    rows = train_masknet([volume], options, *first.values(), (10, 10, 10))
    tuned = TrainingOptions(**{**options.__dict__, "init_checkpoint": str(first["m.pt"])})
    second = {k: tmp_path / f"second_{k}" for k in first}
    again = train_masknet([volume], tuned, *second.values(), (10, 10, 10))
    # The same samples (same seed): starting from trained weights, the first loss is lower.
    assert again[0]["loss"] < rows[0]["loss"]
    wrong = TrainingOptions(**{**tuned.__dict__, "features": 5})
    with pytest.raises(InputError, match="init_checkpoint.*architecture"):
        train_masknet([volume], wrong, *second.values(), (10, 10, 10))


# -- prediction ----------------------------------------------------------------------------


def test_reflected_read_mirrors_about_the_volume_edges():
    vol = np.arange(5 * 6 * 7).reshape(5, 6, 7)
    roi = Roi((-3, -2, 4), (11, 9, 9))
    got = read_reflected(lambda r: vol[r.to_slices()], vol.shape, roi)
    padded = np.pad(vol, ((3, 3), (2, 1), (0, 6)), mode="reflect")
    assert np.array_equal(got, padded[:, :, 4:13])


@pytest.mark.parametrize(
    "levels, blockings",
    [
        (2, [((13, 17, 11), (7, 9, 64)), ((24, 33, 15), (12, 12, 12))]),
        (3, [((12, 17, 29), (12, 64, 64))]),
    ],
)
def test_prediction_does_not_depend_on_blocks_or_tiles(levels, blockings):
    model = tiny_model(levels)
    rng = np.random.default_rng(1)
    vol = rng.integers(0, 255, (24, 33, 29)).astype(np.uint8)
    read = lambda roi: vol[roi.to_slices()]
    norm = {"image_mean": 128, "image_stddev": 33}
    whole = predict_roi(model, read, vol.shape, Roi.from_shape(vol.shape), norm, (64, 64, 64))
    assert whole.shape == (2, 24, 33, 29)
    for block_shape, tile in blockings:
        out = np.zeros_like(whole)
        for block in tiles(Roi.from_shape(vol.shape), block_shape):
            out[(slice(None), *block.to_slices())] = predict_roi(
                model, read, vol.shape, block, norm, tile
            )
        assert np.abs(quantize(whole).astype(int) - quantize(out)).max() <= 1


def write_dataset(tmp_path, raw, labels=None, **extra):
    path = tmp_path / "vol.h5"
    write_volume(f"{path}:raw", raw, (10, 10, 10))
    entry = {"raw": f"{path}:raw", "resolution_nm": [10, 10, 10]}
    if labels is not None:
        write_volume(f"{path}:labels", labels, (10, 10, 10), "segmentation")
        entry["labels"] = f"{path}:labels"
    entry.update(extra)
    return path, entry


def test_predicted_mask_h5_is_the_same_for_two_block_shapes(tmp_path):
    raw, _ = cells((20, 30, 26))
    _, entry = write_dataset(tmp_path, raw)
    ckpt = tmp_path / "masknet.pt"
    save_masknet(ckpt, tiny_model(levels=2), {"image_mean": 128, "image_stddev": 33}, (10, 10, 10))
    results = []
    for i, shape in enumerate([[12, 20, 16], [20, 13, 26]]):
        config = validate_config(
            {
                "datasets": {"d": entry},
                "blocks": {"shape_zyx": shape, "context_zyx": [4, 4, 4]},
                "masknet": {"enabled": True, "checkpoint": str(ckpt), "tile_zyx": [10, 64, 64]},
            }
        )
        from ffnflow.stages.common import block_grid

        grid = block_grid(config, raw.shape)
        files = {}
        for block in grid:
            files[block.id] = tmp_path / f"run{i}" / block.id / "mask.h5"
            run_predict_mask(config, "d", block.id, files[block.id], threads=1)
        run_gather_mask(config, "d", files, tmp_path / f"run{i}" / "mask.h5")
        with h5py.File(tmp_path / f"run{i}" / "mask.h5", "r") as f:
            assert f["boundary"].dtype == np.uint8 and f["exclude"].shape == raw.shape
            results.append({k: f[k][...].astype(int) for k in ("boundary", "exclude")})
    for k in ("boundary", "exclude"):
        assert np.abs(results[0][k] - results[1][k]).max() <= 1


def test_sections_mostly_excluded_are_excluded_whole(tmp_path):
    """gather_mask counts each section's excluded voxels over the blocks (two along z
    here) and excludes a section whole when at least section_exclude_fraction of it is."""
    exclude = np.zeros((8, 20, 20), np.uint8)
    exclude[5, :12] = 200  # 60 % of section 5 flagged (block z1)
    exclude[2, :2] = 255  # 10 % of section 2 (block z0)
    exclude[6, :12] = 40  # 60 % of section 6, but below exclude_threshold 0.2 (level 51)
    _, entry = write_dataset(tmp_path, np.full(exclude.shape, 128, np.uint8))
    results = {}
    for fraction in (0.5, 1.0):
        config = validate_config(
            {
                "datasets": {"d": entry},
                "blocks": {"shape_zyx": [4, 20, 20], "context_zyx": [0, 0, 0]},
                "masknet": {"exclude_threshold": 0.2, "section_exclude_fraction": fraction},
            }
        )
        files = {}
        for z0, block_id in ((0, "z0_y0_x0"), (4, "z1_y0_x0")):
            files[block_id] = tmp_path / f"{fraction}_{block_id}.h5"
            with h5py.File(files[block_id], "w") as f:
                f.attrs["classes"] = ["boundary", "exclude"]
                f.attrs["checkpoint"] = "test"
                for name, data in (
                    ("boundary", np.zeros((4, 20, 20), np.uint8)),
                    ("exclude", exclude[z0 : z0 + 4]),
                ):
                    f.create_dataset(name, data=data).attrs["write_offset_zyx"] = [z0, 0, 0]
        out = tmp_path / f"mask_{fraction}.h5"
        run_gather_mask(config, "d", files, out)
        with h5py.File(out, "r") as f:
            got = f["exclude"][...]
        results[fraction] = [int(z) for z in range(8) if (got[z] == 255).all()]
        if fraction < 1.0:
            got[5] = exclude[5]
        assert np.array_equal(got, exclude)
    assert results == {0.5: [5], 1.0: []}


# -- use downstream: seeds and flood filling -----------------------------------------------


def balls_boundary(shape=(40, 48, 48)):
    """Boundary probability: 1 outside four balls of radius 7, 0 inside; their centres."""
    z, y, x = np.indices(shape)
    centres = [(12, 12, 12), (12, 34, 30), (28, 20, 34), (28, 36, 12)]
    inside = np.zeros(shape, bool)
    for c in centres:
        inside |= (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= 7**2
    return np.where(inside, 0.0, 1.0), centres


def test_masknet_peaks_seed_each_ball_centre_and_never_in_exclude():
    boundary, centres = balls_boundary()
    seeds = masknet_peak_seeds(boundary)
    assert sorted(map(tuple, seeds)) == [tuple(s) for s in seeds]
    for c in centres:
        assert np.min(np.linalg.norm(seeds - np.array(c), axis=1)) <= 1.0
    assert len(seeds) == len(centres)
    exclude = np.zeros(boundary.shape, bool)
    exclude[:20] = True
    seeds = place_seeds(None, "masknet_peaks", mask=exclude, boundary=boundary)
    assert len(seeds) == 2 and not exclude[tuple(seeds.T)].any()
    # A seed needs min_boundary_distance from membrane: balls of radius 7 have none at 9.
    assert len(masknet_peak_seeds(boundary, min_boundary_distance=9)) == 0
    with pytest.raises(InputError, match="masknet_peaks"):
        place_seeds(None, "masknet_peaks")


def voronoi_boundary(shape=(40, 40, 40), n=60, seed=0):
    """Membrane (1.0) between the Voronoi cells of random points, else 0.0."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    points = rng.uniform(0, shape, size=(n, 3))
    grid = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), -1).reshape(-1, 3)
    d, _ = cKDTree(points).query(grid, k=2)
    return (d[:, 1] - d[:, 0] < 1.0).reshape(shape).astype(np.float32)


def test_masknet_peaks_seed_every_cell_region():
    """Every cell region deep enough gets a seed, also one whose deepest part lies at the
    volume's faces (the reference's border exclusion drops those peaks)."""
    import cc3d
    import edt
    from scipy import ndimage

    from ffnflow.seeds import _distance_peaks

    boundary = voronoi_boundary()
    regions = cc3d.connected_components(boundary < 0.5, connectivity=6)
    dist = edt.edt((boundary < 0.5).astype(np.uint8), black_border=False)
    inner = np.zeros(boundary.shape, bool)
    inner[3:-3, 3:-3, 3:-3] = True  # peaks keep min_distance from the faces
    ids = np.unique(regions[regions > 0])
    depth = ndimage.maximum(np.where(inner, dist, 0), regions, ids)
    eligible = {int(i) for i, d in zip(ids, depth) if d >= 2.0}  # min_boundary_distance
    assert len(eligible) >= 40
    seeds = masknet_peak_seeds(boundary)
    assert eligible <= set(regions[tuple(seeds.T)].tolist())
    assert inner[tuple(seeds.T)].all()
    # Peaks of the whole volume at once leave the regions at the faces unseeded.
    plain = _distance_peaks(boundary >= 0.5, None, (1, 1, 1), 3, 42, 2.0)
    assert len(eligible & set(regions[tuple(plain.T)].tolist())) < 0.8 * len(eligible)


def test_masknet_peaks_avoid_weak_membranes():
    """With max_local_boundary, seeds next to a faint membrane (below threshold) are dropped."""
    boundary, centres = balls_boundary()
    z, y, x = np.indices(boundary.shape)
    # A faint membrane (0.3 < threshold 0.5) through the first ball's centre.
    boundary[(np.abs(y - 12) <= 0) & (boundary < 0.5) & (z < 20) & (x < 20)] = 0.3
    seeds = masknet_peak_seeds(boundary)
    near_first = np.linalg.norm(seeds - np.array(centres[0]), axis=1) <= 7
    assert any(abs(s[1] - 12) <= 1 for s in seeds[near_first])  # on the faint membrane
    checked = masknet_peak_seeds(boundary, max_local_boundary=0.05, local_radius=1)
    near_first_checked = np.linalg.norm(checked - np.array(centres[0]), axis=1) <= 7
    kept = {tuple(s) for s in checked}
    assert not any(abs(s[1] - 12) <= 1 for s, near in zip(checked, near_first_checked) if near)
    # Far from any faint membrane nothing changes.
    for c in centres[1:]:
        assert any(np.linalg.norm(np.array(s) - np.array(c)) <= 1.0 for s in kept)


def write_mask_h5(path, boundary, exclude):
    write_volume(f"{path}:boundary", quantize(boundary), (10, 10, 10))
    write_volume(f"{path}:exclude", quantize(exclude.astype(float)), (10, 10, 10))


def test_place_seeds_stage_reads_mask_h5(tmp_path):
    boundary, centres = balls_boundary()
    exclude = np.zeros(boundary.shape, bool)
    exclude[:20] = True
    _, entry = write_dataset(tmp_path, np.where(boundary > 0, 50, 200).astype(np.uint8))
    mask_h5 = tmp_path / "mask.h5"
    write_mask_h5(mask_h5, boundary, exclude)
    config = validate_config(
        {
            "datasets": {"d": entry},
            "seeds": {"policy": "masknet_peaks"},
            "masknet": {"enabled": True},
        }
    )
    n = run_place_seeds(config, "d", "z0_y0_x0", tmp_path / "seeds.csv", mask_h5)
    seeds = np.loadtxt(tmp_path / "seeds.csv", delimiter=",", skiprows=1, dtype=int).reshape(-1, 3)
    assert n == 2 and sorted(map(tuple, seeds)) == sorted(centres[2:])
    # Sobel seeds with the mask net enabled avoid `exclude` too.
    config["seeds"]["policy"] = "sobel_peaks"
    run_place_seeds(config, "d", "z0_y0_x0", tmp_path / "sobel.csv", mask_h5)
    seeds = np.loadtxt(tmp_path / "sobel.csv", delimiter=",", skiprows=1, dtype=int).reshape(-1, 3)
    assert len(seeds) and not exclude[tuple(seeds.T)].any()


def test_masknet_config_errors_name_the_key_and_the_file(tmp_path):
    boundary, _ = balls_boundary()
    _, entry = write_dataset(tmp_path, np.full(boundary.shape, 128, np.uint8))
    config = validate_config({"datasets": {"d": entry}, "seeds": {"policy": "masknet_peaks"}})
    with pytest.raises(InputError, match="seeds.policy.*masknet.enabled"):
        run_place_seeds(config, "d", "z0_y0_x0", tmp_path / "s.csv")
    config["masknet"]["enabled"] = True
    with pytest.raises(InputError, match="mask.h5"):
        run_place_seeds(config, "d", "z0_y0_x0", tmp_path / "s.csv")
    wrong = tmp_path / "wrong.h5"
    write_mask_h5(wrong, boundary[:, :10], boundary[:, :10] > 0)
    with pytest.raises(InputError, match="wrong.h5:exclude.*shape"):
        run_place_seeds(config, "d", "z0_y0_x0", tmp_path / "s.csv", wrong)
    config["masknet"]["checkpoint"] = str(tmp_path / "absent.pt")
    with pytest.raises(InputError, match="absent.pt"):
        run_predict_mask(config, "d", "z0_y0_x0", tmp_path / "m.h5")
    assert not (tmp_path / "m.h5").exists() and not (tmp_path / "s.csv").exists()
    with pytest.raises(InputError, match="masknet.training.datasets"):
        run_train_masknet(config, *(tmp_path / n for n in ("a.pt", "a.csv", "a.png", "a.state")))


def test_mask_labels_shape_mismatch_names_the_file(tmp_path):
    raw, labels = cells()
    _, entry = write_dataset(tmp_path, raw, labels)
    write_volume(f"{tmp_path / 'ann.h5'}:classes", np.zeros((2, 2, 2), np.uint8), (10, 10, 10))
    entry["mask_labels"] = f"{tmp_path / 'ann.h5'}:classes"
    config = validate_config(
        {"datasets": {"d": entry}, "masknet": {"training": {"datasets": {"d": None}, "steps": 1}}}
    )
    with pytest.raises(InputError, match="ann.h5:classes.*shape"):
        run_train_masknet(config, *(tmp_path / n for n in ("a.pt", "a.csv", "a.png", "a.state")))


def test_user_classes_get_their_own_output_and_exclude(tmp_path):
    raw, labels = cells()
    annotation = np.zeros(raw.shape, np.uint8)
    annotation[:, :20] = 2  # "soma"
    _, entry = write_dataset(tmp_path, raw, labels)
    write_volume(f"{tmp_path / 'ann.h5'}:classes", annotation, (10, 10, 10))
    entry["mask_labels"] = f"{tmp_path / 'ann.h5'}:classes"
    config = validate_config(
        {
            "datasets": {"d": entry},
            "masknet": {
                "training": {
                    "datasets": {"d": [{"offset_zyx": [0, 0, 0], "shape_zyx": [24, 32, 32]}]},
                    "classes": ["vessel", "soma"],
                    "steps": 2,
                    "patch_zyx": [16, 16, 16],
                    "features": 2,
                    "levels": 2,
                    "validate_every": 0,
                }
            },
        }
    )
    from ffnflow.stages.mask import training_options, training_volumes

    volumes, _ = training_volumes(config)
    sample = draw_sample(
        volumes[0], training_options(config), np.random.default_rng(0), augment=False
    )
    assert sample.target.shape[0] == 4
    soma = sample.target[3] > 0
    assert soma.any() and sample.target[1][soma].all() and not sample.weight[0][soma].any()
    run_train_masknet(
        config, *(tmp_path / n for n in ("a.pt", "a.csv", "a.png", "a.state")), threads=1
    )
    assert load_masknet(tmp_path / "a.pt").classes == ("boundary", "exclude", "vessel", "soma")


def test_ffn_never_moves_into_nor_labels_excluded_voxels(tmp_path):
    _, tube = tube_image()
    exclude = np.zeros(tube.shape, bool)
    exclude[26:] = True
    raw = np.where(tube, 200, 50).astype(np.uint8)
    _, entry = write_dataset(tmp_path, raw)
    mask_h5 = tmp_path / "mask.h5"
    write_mask_h5(mask_h5, np.zeros(tube.shape), exclude)
    config = validate_config({"datasets": {"d": entry}, "masknet": {"enabled": True}})
    dataset = dataset_config(config, "d")
    ffn_image, movement_mask = ffn_inputs(config, dataset, None, mask_h5)
    assert np.array_equal(movement_mask, exclude)
    predictor = OraclePredictor()
    canvas = RecordingCanvas(ffn_image, predictor, OPTIONS, movement_mask=movement_mask)
    result = canvas.segment_all([(20, 20, 20), (30, 20, 20)])
    assert predictor.centres and not any(exclude[c] for c in predictor.centres)
    assert not result.labels[exclude].any() and result.counters["seeds_skipped_masked"] == 1
    assert np.array_equal(result.labels[1:22] > 0, tube[1:22])
    # Disabled, mask.h5 is not read and nothing is masked.
    config["masknet"]["enabled"] = False
    assert read_movement_mask(config, dataset, None, mask_h5) is None


def test_objects_are_carried_across_a_filled_excluded_section():
    image, tube = tube_image()
    image[20] = -1.0  # a lost section cuts the tube
    excluded = np.zeros(tube.shape, bool)
    excluded[20] = True
    filled = fill_excluded(image, excluded, max_gap=3)
    assert np.array_equal(filled[20], image[19]) and np.array_equal(
        filled[~excluded], image[~excluded]
    )
    inside = tube & ~excluded
    inside[:1] = inside[36:] = False  # FOV centres need 4 voxels of context
    options = InferenceOptions(min_segment_size=10)
    result = Canvas(filled, OraclePredictor(), options, movement_mask=excluded).segment_all(
        [(10, 20, 20)]
    )
    assert (result.labels[inside] == 1).all() and not result.labels[20].any()
    assert (fill_excluded(image, np.ones(tube.shape, bool), 3) == 0).all()


def test_objects_cross_an_excluded_section_their_lattice_would_land_on():
    """Seeded at z 11 with deltas 3, the FOV lattice hits the excluded section z 20: the
    move goes on to the first free section beyond it (z 21), in both engines."""
    from ffnflow.ffn.batched import BatchedCanvas

    image, tube = tube_image()
    excluded = np.zeros(tube.shape, bool)
    excluded[20] = True
    filled = fill_excluded(image, excluded, max_gap=3)
    inside = tube & ~excluded
    inside[:1] = inside[34:] = False  # the end depends on where the last FOVs sit in y, x
    options = InferenceOptions(min_segment_size=10)
    predictor = OraclePredictor()
    canvas = RecordingCanvas(filled, predictor, options, movement_mask=excluded)
    result = canvas.segment_all([(11, 20, 20)])
    assert (result.labels[inside] == 1).all() and not result.labels[20].any()
    centres_z = {c[0] for c in predictor.centres}
    assert 20 not in centres_z and 21 in centres_z and max(centres_z) > 30
    batched = BatchedCanvas(filled, OraclePredictor(), options, excluded, max_objects=4)
    assert np.array_equal(batched.segment_all([(11, 20, 20)]).labels, result.labels)
    # Without the mask the reference's lattice is kept: z 20 is a centre.
    plain = RecordingCanvas(filled, OraclePredictor(), options)
    plain.segment_all([(11, 20, 20)])
    assert 20 in {c[0] for c in plain.predictor.centres}


def test_checkpoint_rejects_other_files(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"arch": {"depth": 3}, "state_dict": {}, "normalization": {}}, bad)
    with pytest.raises(InputError, match="bad.pt.*not a mask net"):
        load_masknet(bad)
    with pytest.raises(InputError, match="classes"):
        MaskNetArch(classes=("exclude", "boundary"))
    assert json.dumps(MaskNetArch().receptive_radius) == "[23, 23, 23]"


def test_cli_errors_name_the_input(tmp_path, capsys):
    from ffnflow.cli import main

    raw, _ = cells((16, 16, 16))
    _, entry = write_dataset(tmp_path, raw)
    entry_config = {
        "datasets": {"d": entry},
        "masknet": {"enabled": True, "checkpoint": str(tmp_path / "nowhere.pt")},
    }
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps(entry_config))
    assert (
        main(
            [
                "predict-mask",
                "--config",
                str(config),
                "--dataset",
                "d",
                "--out",
                str(tmp_path / "m.h5"),
            ]
        )
        == 2
    )
    assert "nowhere.pt" in capsys.readouterr().err
    args = ["--config", str(config), "--dataset", "d", "--block-dir", str(tmp_path / "none")]
    assert main(["gather-mask", *args, "--out", str(tmp_path / "mask.h5")]) == 2
    assert "none/z0_y0_x0/mask.h5" in capsys.readouterr().err
    out = [
        "--out",
        str(tmp_path / "a.pt"),
        "--log-csv",
        str(tmp_path / "a.csv"),
        "--curve",
        str(tmp_path / "a.png"),
    ]
    assert main(["train-masknet", "--config", str(config), *out]) == 2
    assert "masknet.training.datasets" in capsys.readouterr().err
