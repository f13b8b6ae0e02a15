"""The convstack_3d model: shapes, import of the google/ffn weights, checkpoint round trip."""

import h5py
import numpy as np
import pytest
import torch

from ffnflow.errors import InputError
from ffnflow.ffn.model import (
    ConvStack3D,
    ModelArch,
    import_google_npz,
    load_checkpoint,
    save_checkpoint,
    tf_variable_names,
)
from tests.conftest import DEFAULT_CHECKPOINT, GOOGLE_CROP, GOOGLE_NPZ, needs_shared


def test_output_shape_is_input_shape_and_update_is_residual():
    torch.manual_seed(0)
    model = ConvStack3D(
        ModelArch(depth=3, features=4, fov_size_zyx=(9, 11, 13), deltas_zyx=(2, 3, 3))
    )
    image = torch.randn(2, 1, 9, 11, 13)
    pom = torch.randn(2, 1, 9, 11, 13)
    out = model(image, pom)
    assert out.shape == pom.shape
    # With the last layer zeroed the network predicts no update: output == input POM.
    torch.nn.init.zeros_(model.conv_lom.weight)
    torch.nn.init.zeros_(model.conv_lom.bias)
    assert torch.equal(model(image, pom), pom)


def test_every_parameter_has_a_tensorflow_name():
    model = ConvStack3D(ModelArch(depth=12))
    assert set(tf_variable_names(12)) == set(model.state_dict())
    assert len(model.state_dict()) == 2 * (2 * 12 + 1)


def test_flops_per_fov_of_fib25_model():
    assert ModelArch().flops_per_fov == pytest.approx(45.8e9, rel=0.01)


@needs_shared(GOOGLE_NPZ, GOOGLE_CROP)
def test_imported_weights_reproduce_reference_forward_pass():
    arch, state = import_google_npz(GOOGLE_NPZ)
    assert (arch.depth, arch.features) == (12, 32)
    model = ConvStack3D(arch)
    model.load_state_dict(state)
    with h5py.File(GOOGLE_CROP, "r") as f:
        image = f["fov_io/image"][...]  # NDHWC
        seed = f["fov_io/seed"][...]
        expected = f["fov_io/logits"][...]
    to_torch = lambda a: torch.from_numpy(np.moveaxis(a, -1, 1).copy())  # noqa: E731
    with torch.no_grad():
        logits = model(to_torch(image), to_torch(seed)).numpy()
    assert np.abs(logits - np.moveaxis(expected, -1, 1)).max() <= 1e-4


@needs_shared(GOOGLE_NPZ)
def test_shipped_checkpoint_equals_fresh_import(tmp_path):
    arch, state = import_google_npz(GOOGLE_NPZ)
    shipped = load_checkpoint(DEFAULT_CHECKPOINT)
    assert shipped.model.arch == arch
    assert shipped.resolution_nm == (10.0, 10.0, 10.0)
    assert shipped.normalization == {"image_mean": 128.0, "image_stddev": 33.0}
    for name, value in state.items():
        assert torch.equal(shipped.model.state_dict()[name], value), name


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    model = ConvStack3D(
        ModelArch(depth=2, features=4, fov_size_zyx=(9, 9, 9), deltas_zyx=(3, 3, 3))
    )
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, {"image_mean": 100, "image_stddev": 20}, (8, 8, 30))
    loaded = load_checkpoint(path)
    assert loaded.model.arch == model.arch
    assert loaded.resolution_nm == (8.0, 8.0, 30.0)
    x = torch.randn(1, 1, 9, 9, 9)
    with torch.no_grad():
        assert torch.equal(loaded.model(x, x), model.eval()(x, x))
    payload = torch.load(path, weights_only=True)
    assert {"arch", "state_dict", "normalization"} <= set(payload)


def test_bad_checkpoints_raise_clear_errors(tmp_path):
    with pytest.raises(InputError, match="nope.pt: not found"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="bad.pt: cannot be read"):
        load_checkpoint(bad)
    torch.save({"arch": {}}, tmp_path / "partial.pt")
    with pytest.raises(InputError, match="missing keys"):
        load_checkpoint(tmp_path / "partial.pt")
