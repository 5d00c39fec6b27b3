"""LPIPS: the aggregation against the lpips package's formula with its shipped heads, forward parity with
plain-PyTorch AlexNet / VGG16 trunks laid out as torchvision's, and complete weight loading."""
import os

import numpy as np
import pytest
import torch

from editdiff.interop.torch_io import CheckpointError
from eval import lpips, weights
from eval.nets.frozen import jit_inference

# torchvision's VGG16 configuration "D": conv widths, "M" for a 2x2 max pool.
_VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
_CLASSIFIER_SHAPES = {
    "alex": {"classifier.1": (4096, 9216), "classifier.4": (4096, 4096), "classifier.6": (1000, 4096)},
    "vgg": {"classifier.0": (4096, 25088), "classifier.3": (4096, 4096), "classifier.6": (1000, 4096)},
}
# Where the lpips package's pretrained_networks slices end: the taps are the outputs of these indices.
_TAP_AFTER = {"alex": (1, 4, 7, 9, 11), "vgg": (3, 8, 15, 22, 29)}


def _torch_features(backbone):
    """torchvision's `model.features` Sequential (its indices name the state-dict keys), random weights."""
    nn = torch.nn
    torch.manual_seed(0)
    if backbone == "alex":
        return nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
    layers, channels = [], 3
    for width in _VGG16_CFG:  # torchvision.models.vgg.make_layers without batch norm
        if width == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
            channels = width
    return nn.Sequential(*layers)


def _torch_lpips(backbone, features, heads, x0, x1):
    """The lpips package's LPIPS.forward (v0.1, lpips=True, spatial=False), written out for NCHW tensors."""
    shift = torch.tensor([-.030, -.088, -.188])[None, :, None, None]
    scale = torch.tensor([.458, .448, .450])[None, :, None, None]

    def taps(x):
        out, h = [], (x - shift) / scale
        for index, layer in enumerate(features):
            h = layer(h)
            if index in _TAP_AFTER[backbone]:
                out.append(h)
        return out

    return _torch_aggregate(taps(x0), taps(x1), heads)


def _torch_aggregate(outs0, outs1, heads):
    def normalize_tensor(x, eps=1e-10):
        return x / (torch.sqrt(torch.sum(x ** 2, dim=1, keepdim=True)) + eps)

    val = 0
    for k, (a, b) in enumerate(zip(outs0, outs1)):
        lin = torch.nn.Conv2d(a.shape[1], 1, 1, bias=False)
        lin.weight.data = heads[f"lin{k}.model.1.weight"]
        val = val + lin((normalize_tensor(a) - normalize_tensor(b)) ** 2).mean([2, 3], keepdim=True)
    return val[:, 0, 0, 0]


def _shipped_heads(backbone):
    path = os.path.join(weights.lpips_heads_directory(), f"{backbone}.pth")
    return torch.load(path, map_location="cpu", weights_only=True)


def _torchvision_state(features, backbone):
    """A state dict with torchvision's key names and shapes: trained-looking trunk, zero-cost classifier."""
    state = {f"features.{k}": v.numpy() for k, v in features.state_dict().items()}
    for name, shape in _CLASSIFIER_SHAPES[backbone].items():
        state[f"{name}.weight"] = np.broadcast_to(np.float32(0), shape)
        state[f"{name}.bias"] = np.broadcast_to(np.float32(0), shape[:1])
    return state


@pytest.mark.parametrize("backbone", ["alex", "vgg"])
def test_aggregation_matches_lpips_formula_with_shipped_heads(backbone):
    heads = _shipped_heads(backbone)
    channels = [heads[f"lin{k}.model.1.weight"].shape[1] for k in range(5)]
    rng = np.random.default_rng(0)
    feats0 = [rng.normal(size=(2, c, 6 - k, 5)).astype(np.float32) for k, c in enumerate(channels)]
    feats1 = [rng.normal(size=(2, c, 6 - k, 5)).astype(np.float32) for k, c in enumerate(channels)]
    want = _torch_aggregate([torch.from_numpy(f) for f in feats0], [torch.from_numpy(f) for f in feats1], heads)
    to_nhwc = lambda features: [f.transpose(0, 2, 3, 1) for f in features]  # noqa: E731
    head_weights = [heads[f"lin{k}.model.1.weight"][0, :, 0, 0].numpy() for k in range(5)]
    got = lpips.lpips_from_features(to_nhwc(feats0), to_nhwc(feats1), head_weights)
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-5)


@pytest.fixture(scope="module", params=["alex", "vgg"])
def reference(request):
    backbone = request.param
    features = _torch_features(backbone).eval()
    model = lpips.lpips_from_state_dicts(backbone, _torchvision_state(features, backbone),
                                         {k: v.numpy() for k, v in _shipped_heads(backbone).items()},
                                         trunk_source="test trunk", head_source="test heads")
    return backbone, features, model


def test_forward_matches_pytorch_reference(reference):
    backbone, features, model = reference
    rng = np.random.default_rng(1)
    size = 64 if backbone == "alex" else 32
    x0, x1 = rng.uniform(-1, 1, size=(2, 2, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        want = _torch_lpips(backbone, features, _shipped_heads(backbone),
                            torch.from_numpy(x0.transpose(0, 3, 1, 2)), torch.from_numpy(x1.transpose(0, 3, 1, 2)))
    distance = jit_inference(model)
    np.testing.assert_allclose(distance(x0, x1), want.numpy(), rtol=1e-4)
    np.testing.assert_allclose(distance(x0, x0), 0.0, atol=1e-7)


def test_weight_files_are_consumed_completely(reference):
    backbone, features, _ = reference
    heads = {k: v.numpy() for k, v in _shipped_heads(backbone).items()}
    state = _torchvision_state(features, backbone)
    extra = dict(state, **{"features.99.weight": np.zeros((1,), np.float32)})
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): features.99.weight"):
        lpips.lpips_from_state_dicts(backbone, extra, heads, trunk_source="t", head_source="h")
    missing = {k: v for k, v in state.items() if k != "features.0.bias"}
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): features.0.bias"):
        lpips.lpips_from_state_dicts(backbone, missing, heads, trunk_source="t", head_source="h")
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): lin4.model.1.weight"):
        lpips.lpips_from_state_dicts(backbone, state, {k: v for k, v in heads.items() if "lin4" not in k},
                                     trunk_source="t", head_source="h")


def test_load_lpips_reads_torchvision_file_and_names_missing_one(tmp_path):
    with pytest.raises(weights.MissingWeightsError, match="alexnet-owt-7be5be79.pth"):
        lpips.load_lpips(tmp_path, "alex")
    features = _torch_features("alex")
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, tmp_path / "alexnet-owt-7be5be79.pth")
    model = lpips.load_lpips(tmp_path, "alex")
    np.testing.assert_array_equal(np.asarray(model.trunk.convs[0].bias[...]), features[0].bias.detach().numpy())
