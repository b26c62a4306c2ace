"""The pytorch-fid Inception converter: the real key list, where every weight lands, errors,
saving and loading (`lasad_jax.evaluation.weights`); with torch, the NNX network against
a torch forward of pytorch-fid's.

The key list is walked here from the architecture as pytorch-fid builds it (torchvision's
Inception3(num_classes=1008, aux_logits=False) with the FID blocks), independently of the
converter's path -> key rule, so a wrong rule cannot agree with itself.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lasad_jax.convert import inception as conv
from lasad_jax.evaluation.inception import BasicConv2d, avg_pool_exclude_pad, max_pool
from lasad_jax.evaluation.weights import load_inception, save_inception


def pytorch_fid_keys() -> dict[str, tuple[int, ...]]:
    """State-dict keys and shapes of pytorch-fid's FID InceptionV3."""
    keys: dict[str, tuple[int, ...]] = {}

    def basic(name, cin, cout, k):
        kh, kw = (k, k) if isinstance(k, int) else k
        keys[f"{name}.conv.weight"] = (cout, cin, kh, kw)
        for p in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{name}.bn.{p}"] = (cout,)
        keys[f"{name}.bn.num_batches_tracked"] = ()

    def inception_a(n, cin, pool_features):
        basic(f"{n}.branch1x1", cin, 64, 1)
        basic(f"{n}.branch5x5_1", cin, 48, 1), basic(f"{n}.branch5x5_2", 48, 64, 5)
        basic(f"{n}.branch3x3dbl_1", cin, 64, 1), basic(f"{n}.branch3x3dbl_2", 64, 96, 3)
        basic(f"{n}.branch3x3dbl_3", 96, 96, 3), basic(f"{n}.branch_pool", cin, pool_features, 1)

    def inception_c(n, cin, c7):
        basic(f"{n}.branch1x1", cin, 192, 1)
        basic(f"{n}.branch7x7_1", cin, c7, 1), basic(f"{n}.branch7x7_2", c7, c7, (1, 7))
        basic(f"{n}.branch7x7_3", c7, 192, (7, 1))
        basic(f"{n}.branch7x7dbl_1", cin, c7, 1), basic(f"{n}.branch7x7dbl_2", c7, c7, (7, 1))
        basic(f"{n}.branch7x7dbl_3", c7, c7, (1, 7)), basic(f"{n}.branch7x7dbl_4", c7, c7, (7, 1))
        basic(f"{n}.branch7x7dbl_5", c7, 192, (1, 7)), basic(f"{n}.branch_pool", cin, 192, 1)

    def inception_e(n, cin):
        basic(f"{n}.branch1x1", cin, 320, 1)
        basic(f"{n}.branch3x3_1", cin, 384, 1), basic(f"{n}.branch3x3_2a", 384, 384, (1, 3))
        basic(f"{n}.branch3x3_2b", 384, 384, (3, 1))
        basic(f"{n}.branch3x3dbl_1", cin, 448, 1), basic(f"{n}.branch3x3dbl_2", 448, 384, 3)
        basic(f"{n}.branch3x3dbl_3a", 384, 384, (1, 3))
        basic(f"{n}.branch3x3dbl_3b", 384, 384, (3, 1)), basic(f"{n}.branch_pool", cin, 192, 1)

    basic("Conv2d_1a_3x3", 3, 32, 3), basic("Conv2d_2a_3x3", 32, 32, 3)
    basic("Conv2d_2b_3x3", 32, 64, 3), basic("Conv2d_3b_1x1", 64, 80, 1)
    basic("Conv2d_4a_3x3", 80, 192, 3)
    inception_a("Mixed_5b", 192, 32), inception_a("Mixed_5c", 256, 64)
    inception_a("Mixed_5d", 288, 64)
    basic("Mixed_6a.branch3x3", 288, 384, 3), basic("Mixed_6a.branch3x3dbl_1", 288, 64, 1)
    basic("Mixed_6a.branch3x3dbl_2", 64, 96, 3), basic("Mixed_6a.branch3x3dbl_3", 96, 96, 3)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        inception_c(name, 768, c7)
    basic("Mixed_7a.branch3x3_1", 768, 192, 1), basic("Mixed_7a.branch3x3_2", 192, 320, 3)
    basic("Mixed_7a.branch7x7x3_1", 768, 192, 1)
    basic("Mixed_7a.branch7x7x3_2", 192, 192, (1, 7))
    basic("Mixed_7a.branch7x7x3_3", 192, 192, (7, 1))
    basic("Mixed_7a.branch7x7x3_4", 192, 192, 3)
    inception_e("Mixed_7b", 1280), inception_e("Mixed_7c", 2048)
    keys["fc.weight"], keys["fc.bias"] = (1008, 2048), (1008,)
    return keys


def random_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
    """Every key with distinct, well-scaled random values (He-normal conv weights)."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in pytorch_fid_keys().items():
        if key.endswith("num_batches_tracked"):
            out[key] = np.array(12345, np.int64)
        elif key.endswith("conv.weight"):
            out[key] = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
        elif key.endswith(("bn.weight", "running_var")):
            out[key] = rng.uniform(0.5, 1.5, shape)
        else:
            out[key] = (rng.standard_normal(shape) * (0.02 if key == "fc.weight" else 0.1))
        out[key] = out[key].astype(np.float32) if out[key].dtype == np.float64 else out[key]
    return out


@pytest.fixture(scope="module")
def state_dict():
    return random_state_dict()


@pytest.fixture(scope="module")
def params(state_dict):
    return conv.convert_state_dict(state_dict)


def test_real_key_list():
    keys = pytorch_fid_keys()
    # Literal names and shapes from pytorch-fid's / torchvision's inception.py.
    assert keys["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert keys["Mixed_7c.branch3x3dbl_3b.bn.running_var"] == (384,)
    assert keys["fc.weight"] == (1008, 2048)
    assert keys["Mixed_6b.branch7x7_2.conv.weight"] == (128, 128, 1, 7)
    assert keys["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
    assert keys["Mixed_7a.branch3x3_2.conv.weight"] == (320, 192, 3, 3)
    assert keys["Mixed_7b.branch3x3dbl_1.conv.weight"] == (448, 1280, 1, 1)
    assert not any(k.startswith("AuxLogits") for k in keys)  # aux_logits=False
    real = {k: s for k, s in keys.items() if not k.endswith("num_batches_tracked")}
    assert len(real) == 94 * 5 + 2
    assert conv.expected_keys() == real
    n_params = sum(int(np.prod(s)) for k, s in real.items()
                   if not k.endswith(("running_mean", "running_var")))
    # torchvision's inception_v3 has 27,161,264 parameters; minus its aux head (3,326,696)
    # and plus 8 more classes in fc (8 * 2049).
    assert n_params == 27_161_264 - 3_326_696 + 8 * 2049


def test_every_weight_lands_where_it_should(state_dict, params):
    kernel = params[("Conv2d_1a_3x3", "conv", "kernel")]
    weight = state_dict["Conv2d_1a_3x3.conv.weight"]
    assert kernel.shape == (3, 3, 3, 32) and kernel.dtype == np.float32
    assert kernel[2, 0, 1, 17] == weight[17, 1, 2, 0]  # [kh, kw, cin, cout] <- [cout, cin, kh, kw]
    k17 = params[("Mixed_6b", "branch7x7_2", "conv", "kernel")]
    assert k17.shape == (1, 7, 128, 128)
    assert k17[0, 5, 3, 9] == state_dict["Mixed_6b.branch7x7_2.conv.weight"][9, 3, 0, 5]
    bn = "Mixed_7c.branch3x3dbl_3b.bn"
    for leaf, key in (("scale", "weight"), ("bias", "bias"), ("mean", "running_mean"),
                      ("var", "running_var")):
        np.testing.assert_array_equal(params[("Mixed_7c", "branch3x3dbl_3b", "bn", leaf)],
                                      state_dict[f"{bn}.{key}"])
    np.testing.assert_array_equal(params[("fc", "kernel")], state_dict["fc.weight"].T)
    np.testing.assert_array_equal(params[("fc", "bias")], state_dict["fc.bias"])
    assert len(params) == 472
    for path, value in params.items():  # every key, each exactly once, back to torch layout
        key = conv.torch_key(path)
        back = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
        np.testing.assert_array_equal(back, state_dict[key])


def test_missing_unknown_and_misshaped_keys_are_named(state_dict):
    bad = dict(state_dict)
    del bad["Mixed_6d.branch1x1.bn.running_mean"]
    bad["AuxLogits.fc.weight"] = np.zeros((1008, 768), np.float32)
    bad["Mixed_5c.branch5x5_2.conv.weight"] = np.zeros((64, 48, 3, 3), np.float32)
    with pytest.raises(ValueError) as err:
        conv.convert_state_dict(bad, source="bad.pth")
    msg = str(err.value)
    assert "bad.pth" in msg and "Mixed_6d.branch1x1.bn.running_mean" in msg
    assert "unknown keys" in msg and "AuxLogits.fc.weight" in msg
    assert "Mixed_5c.branch5x5_2.conv.weight: expected (64, 48, 5, 5), got (64, 48, 3, 3)" in msg
    no_counters = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    assert len(conv.convert_state_dict(no_counters)) == 472  # the counters are optional


def test_save_load_round_trip(params, tmp_path):
    path = tmp_path / "inception_fid.npz"
    save_inception(path, params)
    model = load_inception(path)
    assert model.preprocess == "adm"
    np.testing.assert_array_equal(np.asarray(model.Mixed_6e.branch7x7dbl_4.conv.kernel[...]),
                                  params[("Mixed_6e", "branch7x7dbl_4", "conv", "kernel")])
    np.testing.assert_array_equal(np.asarray(model.Conv2d_4a_3x3.bn.var[...]),
                                  params[("Conv2d_4a_3x3", "bn", "var")])
    np.testing.assert_array_equal(np.asarray(model.fc.kernel[...]), params[("fc", "kernel")])
    again = tmp_path / "again.npz"
    save_inception(again, model)  # from a model: the same arrays
    with np.load(path) as a, np.load(again) as b:
        assert sorted(a.files) == sorted(b.files) and len(a.files) == 473
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])
    assert load_inception(path, preprocess="pytorch_fid").preprocess == "pytorch_fid"


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_inception(tmp_path / "missing.npz")
    msg = str(err.value)
    assert conv.WEIGHTS_URL in msg and "python -m lasad_jax.convert.inception" in msg
    assert "missing.npz" in msg
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, w=np.zeros(3))
    with pytest.raises(ValueError, match="__format__"):
        load_inception(foreign)


# ---------------------------------------------------------------------------- against torch

def _torch_forward(torch, sd, x):
    """pytorch-fid's FID InceptionV3 forward (inception.py + torchvision), functional."""
    F = torch.nn.functional
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}

    def basic(n, x, stride=1, padding=0):
        x = F.conv2d(x, t[f"{n}.conv.weight"], stride=stride, padding=padding)
        x = F.batch_norm(x, t[f"{n}.bn.running_mean"], t[f"{n}.bn.running_var"],
                         t[f"{n}.bn.weight"], t[f"{n}.bn.bias"], training=False, eps=0.001)
        return F.relu(x)

    def avg(x):
        return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)

    def block_a(n, x):
        b5 = basic(f"{n}.branch5x5_2", basic(f"{n}.branch5x5_1", x), padding=2)
        b3 = basic(f"{n}.branch3x3dbl_2", basic(f"{n}.branch3x3dbl_1", x), padding=1)
        b3 = basic(f"{n}.branch3x3dbl_3", b3, padding=1)
        return torch.cat([basic(f"{n}.branch1x1", x), b5, b3, basic(f"{n}.branch_pool", avg(x))], 1)

    def block_c(n, x):
        b7 = basic(f"{n}.branch7x7_2", basic(f"{n}.branch7x7_1", x), padding=(0, 3))
        b7 = basic(f"{n}.branch7x7_3", b7, padding=(3, 0))
        bd = basic(f"{n}.branch7x7dbl_1", x)
        for i, pad in ((2, (3, 0)), (3, (0, 3)), (4, (3, 0)), (5, (0, 3))):
            bd = basic(f"{n}.branch7x7dbl_{i}", bd, padding=pad)
        return torch.cat([basic(f"{n}.branch1x1", x), b7, bd, basic(f"{n}.branch_pool", avg(x))], 1)

    def block_e(n, x, pool):
        b3 = basic(f"{n}.branch3x3_1", x)
        b3 = torch.cat([basic(f"{n}.branch3x3_2a", b3, padding=(0, 1)),
                        basic(f"{n}.branch3x3_2b", b3, padding=(1, 0))], 1)
        bd = basic(f"{n}.branch3x3dbl_2", basic(f"{n}.branch3x3dbl_1", x), padding=1)
        bd = torch.cat([basic(f"{n}.branch3x3dbl_3a", bd, padding=(0, 1)),
                        basic(f"{n}.branch3x3dbl_3b", bd, padding=(1, 0))], 1)
        bp = F.max_pool2d(x, 3, stride=1, padding=1) if pool == "max" else avg(x)
        return torch.cat([basic(f"{n}.branch1x1", x), b3, bd, basic(f"{n}.branch_pool", bp)], 1)

    x = basic("Conv2d_1a_3x3", x, stride=2)
    x = basic("Conv2d_2b_3x3", basic("Conv2d_2a_3x3", x), padding=1)
    x = F.max_pool2d(x, 3, stride=2)
    x = F.max_pool2d(basic("Conv2d_4a_3x3", basic("Conv2d_3b_1x1", x)), 3, stride=2)
    for n in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        x = block_a(n, x)
    b3 = basic("Mixed_6a.branch3x3dbl_2", basic("Mixed_6a.branch3x3dbl_1", x), padding=1)
    x = torch.cat([basic("Mixed_6a.branch3x3", x, stride=2),
                   basic("Mixed_6a.branch3x3dbl_3", b3, stride=2), F.max_pool2d(x, 3, 2)], 1)
    x = block_c("Mixed_6c", block_c("Mixed_6b", x))
    spatial = basic("Mixed_6d.branch1x1", x)
    x = block_c("Mixed_6e", block_c("Mixed_6d", x))
    b3 = basic("Mixed_7a.branch3x3_2", basic("Mixed_7a.branch3x3_1", x), stride=2)
    b7 = basic("Mixed_7a.branch7x7x3_1", x)
    b7 = basic("Mixed_7a.branch7x7x3_2", b7, padding=(0, 3))
    b7 = basic("Mixed_7a.branch7x7x3_3", b7, padding=(3, 0))
    b7 = basic("Mixed_7a.branch7x7x3_4", b7, stride=2)
    x = torch.cat([b3, b7, F.max_pool2d(x, 3, 2)], 1)
    x = block_e("Mixed_7c", block_e("Mixed_7b", x, "avg"), "max")
    pool = x.mean(dim=(2, 3))
    return pool, spatial, pool @ t["fc.weight"].T


def test_whole_network_matches_torch_forward(state_dict, params):
    torch = pytest.importorskip("torch")
    from lasad_jax.evaluation.inception import inception_from_arrays

    x = np.random.default_rng(1).uniform(-1, 1, (1, 299, 299, 3)).astype(np.float32)
    model = inception_from_arrays(params)
    got = jax.tree.map(np.asarray, jax.jit(lambda v: model.features(v))(x))
    with torch.no_grad():
        pool, spatial, logits = _torch_forward(torch, state_dict,
                                               torch.from_numpy(x).permute(0, 3, 1, 2))
    spatial = spatial[:, :7].permute(0, 2, 3, 1).reshape(1, -1)  # ADM: NHWC [..., :7]
    for name, want in (("pool", pool), ("spatial", spatial), ("logits", logits)):
        want = want.numpy()
        assert np.std(want) > 1e-2
        err = np.max(np.abs(got[name] - want)) / np.max(np.abs(want))
        assert err < 1e-4, (name, err)


def test_conv_bn_relu_and_pools_match_torch():
    torch = pytest.importorskip("torch")
    from flax import nnx

    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 5, 9, 11)).astype(np.float32)  # NCHW
    for k, stride, pad in (((1, 3), 1, (0, 1)), (3, 2, 0), ((7, 1), 1, (3, 0))):
        tconv = torch.nn.Conv2d(5, 6, k, stride=stride, padding=pad, bias=False)
        tbn = torch.nn.BatchNorm2d(6, eps=0.001).eval()
        with torch.no_grad():
            for p in (tbn.weight, tbn.bias, tbn.running_mean):
                p.copy_(torch.from_numpy(rng.standard_normal(6).astype(np.float32)))
            tbn.running_var.copy_(torch.from_numpy(rng.uniform(0.2, 2, 6).astype(np.float32)))
            want = torch.relu(tbn(tconv(torch.from_numpy(x)))).permute(0, 2, 3, 1).numpy()
        block = BasicConv2d(5, 6, k, stride=stride, padding=pad, rngs=nnx.Rngs(0))
        sd = {"weight": tconv.weight, "bn.weight": tbn.weight, "bn.bias": tbn.bias,
              "mean": tbn.running_mean, "var": tbn.running_var}
        sd = {k2: v.detach().numpy() for k2, v in sd.items()}
        block.conv.kernel[...] = conv.from_torch(("conv", "kernel"), sd["weight"])
        block.bn.scale[...], block.bn.bias[...] = sd["bn.weight"], sd["bn.bias"]
        block.bn.mean[...], block.bn.var[...] = sd["mean"], sd["var"]
        got = np.asarray(block(x.transpose(0, 2, 3, 1)))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    tx, nhwc = torch.from_numpy(x), x.transpose(0, 2, 3, 1)
    avg = torch.nn.functional.avg_pool2d(tx, 3, 1, 1, count_include_pad=False)
    np.testing.assert_allclose(np.asarray(avg_pool_exclude_pad(nhwc)),
                               avg.permute(0, 2, 3, 1).numpy(), rtol=1e-6, atol=1e-6)
    counted = torch.nn.functional.avg_pool2d(tx, 3, 1, 1, count_include_pad=True)
    assert not np.allclose(avg.numpy(), counted.numpy())  # the patch matters at borders
    for stride, pad in ((1, 1), (2, 0)):
        mx = torch.nn.functional.max_pool2d(tx, 3, stride, pad).permute(0, 2, 3, 1).numpy()
        np.testing.assert_array_equal(np.asarray(max_pool(nhwc, stride, pad)), mx)


def test_cli_converts_a_pth(state_dict, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    pth = tmp_path / conv.WEIGHTS_FILE
    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()}, pth)
    out = tmp_path / "inception_fid.npz"
    assert conv.main([f"--torch_weights={pth}", f"--out={out}"]) == 0
    assert "472 converted, 94 dropped" in capsys.readouterr().out
    model = load_inception(out)
    np.testing.assert_array_equal(np.asarray(model.Mixed_5d.branch5x5_2.conv.kernel[...]),
                                  state_dict["Mixed_5d.branch5x5_2.conv.weight"]
                                  .transpose(2, 3, 1, 0))
