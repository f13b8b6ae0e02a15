"""The fused Triton convolution kernel computes the FFN's function (Triton's interpreter,
on the CPU; skipped where Triton is not installed)."""

import importlib.util
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="Triton is not installed"
)

CHECK = r"""
import numpy as np, torch, torch.nn.functional as F
from ffnflow.ffn.model import ConvStack3D, ModelArch
from ffnflow.ffn.predictor import FovPredictor
from ffnflow.ffn.triton_conv import (Launch, conv3x3x3, conv_first, parse_launch, relaid_weight,
                                     tap_weight)

g = torch.Generator().manual_seed(0)
x = torch.randn(2, 16, 5, 6, 7, generator=g)  # sides differ on purpose
w = torch.randn(16, 16, 3, 3, 3, generator=g) / 10
b = torch.randn(16, generator=g)
res = torch.randn(2, 16, 5, 6, 7, generator=g)
ref = F.conv3d(x, w, b, padding=1) + res
cl = lambda t: t.permute(0, 2, 3, 4, 1).contiguous()
stream = cl(res)
out, low = conv3x3x3(cl(x), tap_weight(w, torch.float32), b, residual=stream,
                     write_relu_low=True, launch=Launch(block_m=32, unroll=True))
assert out is stream  # the residual stream is updated in place
torch.testing.assert_close(out, cl(ref), rtol=1e-4, atol=1e-4)
torch.testing.assert_close(low, cl(ref).relu(), rtol=1e-4, atol=1e-4)
none, only = conv3x3x3(cl(x), tap_weight(w, torch.float32), b, write_f32=False,
                       write_relu_low=True, launch=parse_launch("m64,u0,s2"))  # pipelined
# loop; more rows than voxels per program
assert none is None
torch.testing.assert_close(only, cl(F.conv3d(x, w, b, padding=1)).relu(), rtol=1e-4, atol=1e-4)

# the pair kernel (two z sections per program), an odd number of sections, and its last
# convolution with the final 1x1x1 one
lw, lb = torch.randn(16, generator=g), torch.randn(1, generator=g)
inputs = torch.randn(2, 5, 6, 7, 2, generator=g)
pair = parse_launch("m64,u1,p1")
logits, _ = conv3x3x3(cl(x), relaid_weight(w, torch.float32, pair), b, residual=cl(res),
                      launch=pair, final=(lw, lb, inputs))
torch.testing.assert_close(logits, inputs[..., 1] + cl(ref).relu() @ lw + lb, rtol=1e-4,
                           atol=1e-4)
try:
    conv3x3x3(cl(x), tap_weight(w, torch.float32), b, launch=pair)
    raise AssertionError("the pair kernel took a tap kernel's weights")
except ValueError as exc:
    assert "kernel (27, 16, 16) is not" in str(exc)

assert str(parse_launch("u1,m64")) == "m64,w4,s3,u1"
assert str(parse_launch("p1")) == "m256,w4,s3,u0,p1"
assert parse_launch("w8, m256") == Launch(block_m=256, num_warps=8)
try:
    parse_launch("m12x")
    raise AssertionError("parse_launch accepted m12x")
except ValueError as exc:
    assert "m12x" in str(exc)

# the first convolution: 2 float32 features, float32 result and its ReLU in bf16
x2 = torch.randn(2, 2, 5, 6, 7, generator=g)
w2 = torch.randn(16, 2, 3, 3, 3, generator=g)
ref2 = cl(F.conv3d(x2, w2, b, padding=1))
out2, low2 = conv_first(cl(x2), tap_weight(w2, torch.float32), b, torch.bfloat16)
torch.testing.assert_close(out2, ref2, rtol=1e-4, atol=1e-4)
assert low2.dtype == torch.bfloat16
torch.testing.assert_close(low2.float(), ref2.relu(), rtol=1e-2, atol=1e-2)

torch.manual_seed(1)
model = ConvStack3D(ModelArch(depth=3, features=16, fov_size_zyx=(7, 9, 11))).eval()
rng = np.random.default_rng(0)
image = rng.normal(size=(3, 7, 9, 11)).astype(np.float32)
pom = rng.normal(size=(3, 7, 9, 11)).astype(np.float32)
fused = FovPredictor(model, "cpu", "fp32", threads=1, conv="triton")
assert fused.conv == "triton" and not fused.compiled
expected = FovPredictor(model, "cpu", "fp32", threads=1, conv="conv3d").predict(image, pom)
np.testing.assert_allclose(fused.predict(image, pom), expected, atol=1e-4)
import ffnflow.ffn.triton_conv as triton_conv
triton_conv.LAUNCH = parse_launch("m128,p1")  # what gpu_acceptance.py --triton-launch does
paired = FovPredictor(model, "cpu", "fp32", threads=1, conv="triton")
np.testing.assert_allclose(paired.predict(image, pom), expected, atol=1e-4)
print("ok")
"""


def test_fused_kernel_and_stack_equal_conv3d_under_the_interpreter():
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    run = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-3000:]
