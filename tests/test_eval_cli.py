"""`python -m eval` on small folders: rows equal the library functions; bad files are reported, not fatal."""
import json

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from editdiff.nn.clip_preprocess import resize_center_crop
from eval import cli, distribution, metrics, streaming
from inception_testing import write_random_inception_file

SIZE = 64  # AlexNet's trunk needs at least ~63 pixels


def _save(path, array):
    Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("scores")
    pred, target = root / "pred", root / "target"
    pred.mkdir(), target.mkdir()
    rng = np.random.default_rng(0)
    images = {}
    for name in ("a", "b", "c"):
        t = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        p = np.clip(t.astype(int) + rng.integers(-20, 21, t.shape), 0, 255).astype(np.uint8)
        _save(target / f"{name}.png", t)
        _save(pred / f"{name}.png", p)
        images[name] = (p, t)
    _save(pred / "only_pred.png", images["a"][0])
    _save(target / "only_target.png", images["a"][1])
    (pred / "broken.png").write_bytes(b"not a png")
    _save(target / "broken.png", images["a"][1])
    _save(pred / "small.png", images["a"][0][:8, :8])
    _save(target / "small.png", images["a"][1][:8, :9])
    _save(pred / "tiny.png", images["a"][0][:8, :8])
    _save(target / "tiny.png", images["a"][1][:8, :8])
    return pred, target, images


def test_pixel_metrics_rows_and_problems(folders, tmp_path):
    pred, target, images = folders
    out = tmp_path / "results.json"
    assert cli.main(["--pred", str(pred), "--target", str(target), "--metrics", "l1,psnr,ssim", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    rows = {row["name"]: row for row in results["rows"]}
    assert sorted(rows) == ["a", "b", "c"] and results["count"] == 3
    for name, (p, t) in images.items():
        p, t = p[None] / 255.0, t[None] / 255.0
        assert rows[name]["l1"] == pytest.approx(float(metrics.l1(p, t)[0]), rel=1e-5)
        assert rows[name]["psnr"] == pytest.approx(float(metrics.psnr(p, t, 1.0)[0]), rel=1e-5)
        assert rows[name]["ssim"] == pytest.approx(float(metrics.ssim(p, t, 1.0)[0]), rel=1e-5)
    assert results["means"]["psnr"] == pytest.approx(np.mean([rows[n]["psnr"] for n in "abc"]))
    reasons = {p["path"].split("/")[-1] + ":" + p["path"].split("/")[-2]: p["reason"] for p in results["problems"]}
    assert reasons["only_pred.png:pred"] == "no target with this name"
    assert reasons["only_target.png:target"] == "no prediction with this name"
    assert reasons["broken.png:pred"].startswith("unreadable image")
    assert "differs from the target" in reasons["small.png:pred"]
    assert reasons["tiny.png:pred"] == "too small (8x8): ssim needs 11x11"
    markdown = out.with_suffix(".md").read_text()
    assert "| psnr (mean per image) |" in markdown and "no target with this name" in markdown


def test_bad_arguments_are_errors_not_tracebacks(folders, tmp_path, capsys):
    pred, target, _ = folders
    out = str(tmp_path / "r.json")
    assert cli.main(["--pred", str(pred), "--target", str(target), "--metrics", "l1,iou", "--out", out]) == 2
    assert "unknown ['iou']" in capsys.readouterr().err
    assert cli.main(["--pred", str(pred), "--target", str(target), "--metrics", "lpips", "--out", out]) == 2
    assert "need network weights" in capsys.readouterr().err
    assert cli.main(["--pred", str(pred), "--target", str(target), "--metrics", "kid", "--weights", str(tmp_path),
                     "--out", out]) == 2
    assert "pt_inception-2015-12-05-6726825d.pth" in capsys.readouterr().err


def test_lpips_and_kid_with_weight_files(folders, tmp_path):
    pred, target, _ = folders
    torch.manual_seed(0)
    alex_convs = {0: torch.nn.Conv2d(3, 64, 11), 3: torch.nn.Conv2d(64, 192, 5), 6: torch.nn.Conv2d(192, 384, 3),
                  8: torch.nn.Conv2d(384, 256, 3), 10: torch.nn.Conv2d(256, 256, 3)}
    torch.save({f"features.{i}.{k}": v for i, conv in alex_convs.items() for k, v in conv.state_dict().items()},
               tmp_path / "alexnet-owt-7be5be79.pth")
    write_random_inception_file(tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    out = tmp_path / "results.json"
    assert cli.main(["--pred", str(pred), "--target", str(target), "--metrics", "lpips,kid,fid",
                     "--weights", str(tmp_path), "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["count"] == 3 and all(row["lpips"] > 0 for row in results["rows"])
    kid = results["set_metrics"]["kid"]
    assert np.isfinite(kid["mean"]) and kid["std"] >= 0 and np.isfinite(results["set_metrics"]["fid"])


def test_clip_similarity_and_clip_kid_fid_match_transformers(folders, tmp_path):
    pred, target, _ = folders
    torch.manual_seed(0)
    config = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=48, projection_dim=16,
                                           num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)
    reference = transformers.CLIPVisionModelWithProjection(config).eval()
    reference.save_pretrained(tmp_path / "clip")
    out = tmp_path / "results.json"
    assert cli.main(["--pred", str(pred), "--target", str(target), "--metrics", "clip,kid,fid", "--set-features",
                     "clip", "--clip", str(tmp_path / "clip"), "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    rows = {row["name"]: row["clip"] for row in results["rows"]}
    assert sorted(rows) == ["a", "b", "c", "tiny"]  # CLIP resizes, so 8x8 images are scored too
    embeddings = {"pred": [], "target": []}
    for name in sorted(rows):
        p, t = (np.asarray(Image.open(folder / f"{name}.png")) for folder in (pred, target))
        pixels = [np.array(resize_center_crop(x[None] / 127.5 - 1.0, size=32)).transpose(0, 3, 1, 2) for x in (p, t)]
        with torch.no_grad():
            a, b = (reference(pixel_values=torch.from_numpy(x)).image_embeds[0].numpy() for x in pixels)
        assert rows[name] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b), abs=1e-5)
        embeddings["pred"].append(a), embeddings["target"].append(b)
    want_kid = distribution.kid(np.stack(embeddings["pred"]), np.stack(embeddings["target"]))
    assert results["set_metrics"]["kid"]["mean"] == pytest.approx(want_kid[0], rel=1e-3, abs=1e-6)
    want_fid = distribution.fid(np.stack(embeddings["pred"]), np.stack(embeddings["target"]))
    assert results["set_metrics"]["fid"] == pytest.approx(want_fid, rel=1e-3)


def test_metric_table_means_over_images_that_have_the_metric():
    table = streaming.MetricTable()
    table.add(["x", "y"], {"psnr": np.array([10.0, 20.0])})
    table.add(["z"], {"psnr": np.array([30.0]), "lpips": np.array([0.5])})
    assert table.means() == {"psnr": 20.0, "lpips": 0.5} and len(table) == 3
