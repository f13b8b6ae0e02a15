"""The z-split formulation of the FFN's 3x3x3 convolutions computes the same function."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ffnflow.errors import InputError
from ffnflow.ffn.model import ConvStack3D, ModelArch
from ffnflow.ffn.predictor import FovPredictor, batch_bucket
from ffnflow.ffn.zsplit import ZSplitStack, zsplit_conv, zsplit_weight


def test_zsplit_conv_equals_conv3d_on_random_data():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 7, 6, 9, generator=gen)  # N, C, z, y, x; sides differ on purpose
    w = torch.randn(4, 5, 3, 3, 3, generator=gen)
    b = torch.randn(4, generator=gen)
    ref = F.conv3d(x, w, b, padding=1)
    got = zsplit_conv(x.permute(0, 2, 3, 4, 1).contiguous(), zsplit_weight(w), b)
    torch.testing.assert_close(got.permute(0, 4, 1, 2, 3), ref, rtol=1e-5, atol=1e-5)


def test_zsplit_weight_refuses_other_kernels():
    with pytest.raises(ValueError, match="3x3x3"):
        zsplit_weight(torch.zeros(4, 4, 1, 1, 1))


def test_zsplit_stack_equals_the_model_in_float32():
    torch.manual_seed(0)
    model = ConvStack3D(ModelArch(depth=3, features=6, fov_size_zyx=(9, 11, 13))).eval()
    image = torch.randn(3, 1, 9, 11, 13)
    pom = torch.rand(3, 1, 9, 11, 13) * 6 - 3
    with torch.no_grad():
        ref = model(image, pom)
        got = ZSplitStack(model, torch.float32)(image, pom)
        low_stream = ZSplitStack(model, torch.float32, residual_dtype=torch.bfloat16)(image, pom)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    # a bfloat16 residual stream rounds it (8 bits) after every module, and no more
    err = (low_stream - ref).abs().max() / ref.abs().max()
    assert 0 < err < 0.05


def test_predictor_with_zsplit_predicts_as_conv3d():
    torch.manual_seed(1)
    model = ConvStack3D(ModelArch(depth=2, features=4, fov_size_zyx=(9, 9, 9))).eval()
    rng = np.random.default_rng(0)
    image = rng.normal(size=(4, 9, 9, 9)).astype(np.float32)
    pom = rng.normal(size=(4, 9, 9, 9)).astype(np.float32)
    ref = FovPredictor(model, "cpu", "fp32", threads=1, conv="conv3d")
    fast = FovPredictor(model, "cpu", "fp32", threads=1, conv="zsplit", pow2_batches=True)
    assert fast.conv == "zsplit" and not fast.compiled
    low_stream = FovPredictor(model, "cpu", "fp32", threads=1, conv="zsplit", residual="low")
    np.testing.assert_allclose(low_stream.predict(image, pom), ref.predict(image, pom), atol=1e-4)
    with pytest.raises(InputError, match="ffn.residual 'low'"):
        FovPredictor(model, "cpu", "bf16", threads=1, conv="conv3d", residual="low")
    with pytest.raises(InputError, match="ffn.residual"):
        FovPredictor(model, "cpu", "bf16", threads=1, conv="zsplit", residual="fp8")
    assert FovPredictor(model, "cpu", "bf16", threads=1).conv == "conv3d"  # auto on the CPU
    np.testing.assert_allclose(fast.predict(image, pom), ref.predict(image, pom), atol=1e-4)
    # predict_into: the same logits written in place (5 FOVs padded to 8)
    x = np.stack([image, pom], axis=1)
    outs = [np.full((3, 9, 9, 9), np.nan, np.float32), np.full((2, 9, 9, 9), np.nan, np.float32)]
    fast.predict_into([(x[:3], outs[0]), (np.concatenate([x[3:], x[:1]]), outs[1])])  # 5 -> 8
    np.testing.assert_allclose(
        np.concatenate(outs), ref.predict(np.concatenate([image, image[:1]]),
                                          np.concatenate([pom, pom[:1]])), atol=1e-4
    )  # fmt: skip
    with pytest.raises(InputError, match="ffn.conv"):
        FovPredictor(model, "cpu", conv="winograd")


def test_batch_buckets_pad_little_and_to_few_sizes():
    assert [batch_bucket(n) for n in (1, 2, 3, 5, 8, 9, 36, 65, 129, 512, 513, 700, 800)] == [
        1, 2, 4, 8, 8, 16, 40, 80, 160, 512, 768, 768, 1024,
    ]  # fmt: skip
    sizes = {batch_bucket(n) for n in range(1, 513)}
    assert len(sizes) == 27
    assert all(n <= batch_bucket(n) <= max(1.5 * n, n + 31) for n in range(1, 2000))
    # finer steps up to 64 FOVs: less padding of the engine's 30-40 FOV calls, more sizes
    assert [batch_bucket(n, 2) for n in (1, 2, 3, 37, 63, 65)] == [1, 2, 4, 38, 64, 80]
    assert [batch_bucket(n, 1) for n in (3, 37, 64, 65)] == [3, 37, 64, 80]
    assert len({batch_bucket(n, 4) for n in range(1, 513)}) == 34  # 1, 2, 4, 8..64 by 4, ...
    with pytest.raises(InputError, match="step 3"):
        batch_bucket(5, 3)
    with pytest.raises(InputError, match="bucket_step"):
        FovPredictor(ConvStack3D(ModelArch(depth=1, features=2)), "cpu", bucket_step=3)


def test_a_failing_compiler_falls_back_to_uncompiled_3d_convolutions(monkeypatch, caplog):
    import ffnflow.ffn.predictor as predictor_module

    def broken_compile(fn, **kwargs):
        def compiled(*args):
            raise RuntimeError("no working C compiler")

        return compiled

    monkeypatch.setattr(predictor_module.torch, "compile", broken_compile)
    torch.manual_seed(2)
    model = ConvStack3D(ModelArch(depth=2, features=4, fov_size_zyx=(9, 9, 9))).eval()
    rng = np.random.default_rng(1)
    image = rng.normal(size=(2, 9, 9, 9)).astype(np.float32)
    pom = rng.normal(size=(2, 9, 9, 9)).astype(np.float32)
    pred = FovPredictor(model, "cpu", "fp32", threads=1, conv="zsplit", compile=True)
    assert pred.compiled and pred.conv == "zsplit"
    with caplog.at_level("WARNING"):
        got = pred.predict(image, pom)
    assert "no working C compiler" in caplog.text
    assert not pred.compiled and pred.conv == "conv3d"
    ref = FovPredictor(model, "cpu", "fp32", threads=1, conv="conv3d").predict(image, pom)
    np.testing.assert_allclose(got, ref, atol=1e-5)
