"""`python -m eval`: score a folder of predictions against a folder of targets; write JSON and markdown.

    python -m eval --pred DIR --target DIR --metrics l1,psnr,ssim,lpips,kid --weights DIR --out results.json
"""
from __future__ import annotations

import argparse
import sys

from eval.folder_scoring import METRICS, SET_FEATURES, ScoringOptions, score_folders
from eval.report import to_markdown, write_report
from eval.weights import MissingWeightsError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval", description=__doc__.splitlines()[0])
    parser.add_argument("--pred", required=True, help="folder of predicted images")
    parser.add_argument("--target", required=True, help="folder of target images (paired by file name)")
    parser.add_argument("--metrics", default="l1,psnr,ssim", help=f"comma-separated, from: {','.join(METRICS)}")
    parser.add_argument("--weights", default=None, help="folder with the backbone weight files (lpips, kid, fid)")
    parser.add_argument("--clip", default=None, help="transformers CLIP folder (for the clip metric)")
    parser.add_argument("--out", required=True, help="results JSON path; the markdown table goes beside it (.md)")
    parser.add_argument("--y-channel", action="store_true", help="PSNR / SSIM / MSE on BT.601 luma")
    parser.add_argument("--lpips-backbone", default="alex", choices=("alex", "vgg"))
    parser.add_argument("--set-features", default="inception", choices=SET_FEATURES,
                        help="features KID / FID compare: Inception pool3 (standard) or CLIP image embeddings")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        options = ScoringOptions(metrics=tuple(m.strip() for m in args.metrics.split(",") if m.strip()),
                                 weights_dir=args.weights, clip_dir=args.clip, y_channel=args.y_channel,
                                 lpips_backbone=args.lpips_backbone, set_features=args.set_features)
        results = score_folders(args.pred, args.target, options)
    except (ValueError, MissingWeightsError, NotADirectoryError) as error:
        print(f"python -m eval: {error}", file=sys.stderr)
        return 2
    write_report(results, args.out)
    print(to_markdown(results), end="")
    return 0
