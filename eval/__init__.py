"""editdiff's standalone metrics: pure functions, frozen feature networks, streaming accumulation, a CLI.

Nothing here imports the trainer; the trainer imports this. Images are NHWC. Every image metric returns one
value per image, shape (B,): average rows yourself (or with `eval.streaming.MetricTable`).

Pixel metrics (`eval.metrics`, jit-able, (B, H, W, C) -> (B,)):
    l1(pred, target)                                   mean absolute error
    mse(pred, target, *, y_channel=False, data_range=1.0)
    rmse(pred, target, *, y_channel=False, data_range=1.0)
    psnr(pred, target, data_range, *, y_channel=False) 10 log10(data_range^2 / MSE); data_range is explicit:
                                                       1.0 for [0, 1], 2.0 for [-1, 1], 255 for uint8
    ssim(pred, target, data_range, *, y_channel=False) Gaussian 11x11 / sigma 1.5, K1 0.01, K2 0.03,
                                                       population moments, valid region, mean over channels;
                                                       equals scikit-image's structural_similarity(
                                                       gaussian_weights=True, sigma=1.5,
                                                       use_sample_covariance=False, data_range=...)
    y_channel=True scores BT.601 luma, as restoration papers do.

Learned and distribution metrics (feature networks take (B, H, W, 3) in [-1, 1]):
    eval.lpips.load_lpips(weights_dir, "alex" | "vgg") -> LPIPS; model(pred, target) -> (B,)
    eval.nets.inception.load_inception(weights_dir) -> FIDInceptionV3; model(images) -> (B, 2048)
    eval.distribution.kid(features_a, features_b) -> (mean, std)   cubic-kernel unbiased MMD^2,
                                                                   100 subsets of min(N, 1000), seed 2020
    eval.distribution.fid(features_a, features_b) -> float         eigenvalue form, no scipy.linalg.sqrtm
    eval.clip_features.load_clip_image_encoder(directory) / clip_image_embeddings(model, images)
                                                                   CLIP image embeddings (project CLIP)
    eval.embedding.cosine_similarity(a, b) -> (B,)
    Weight files (weights_dir): torchvision's alexnet-owt-7be5be79.pth / vgg16-397923af.pth, pytorch-fid's
    pt_inception-2015-12-05-6726825d.pth; the LPIPS heads come from `pip install --no-deps lpips==0.1.4`.
    A missing file raises eval.weights.MissingWeightsError naming the file and where to put it.

Task metrics:
    eval.segmentation.confusion_matrix(pred, target, num_classes, ignore_index=255) / miou(confusion)
    eval.depth.depth_metrics(pred, target, *, min_depth, max_depth, median_scaling) -> {name: (B,)}
    eval.multilabel.selector_metrics(scores, labels, threshold=0.0) -> ZTA, mAP, CP, CR, CF1, OP, OR, OF1

Accumulation over large sets (`eval.streaming`): MetricTable (per-image rows + means), FeatureBank (features for
KID / FID), ConfusionMatrix (dataset-level mIoU).

Command line:
    python -m eval --pred DIR --target DIR --metrics l1,psnr,ssim,lpips,kid --weights DIR --out results.json
writes results.json (settings, per-image rows, means, set metrics, files not scored and why) and results.md.
Also: --metrics clip --clip DIR (cosine similarity of CLIP image embeddings), --set-features clip (KID / FID
on CLIP image embeddings instead of Inception pool3), --y-channel, --lpips-backbone vgg.
"""
from eval import depth, distribution, embedding, grain, metrics, multilabel, segmentation, streaming

__all__ = ["depth", "distribution", "embedding", "grain", "metrics", "multilabel", "segmentation", "streaming"]
