"""Frozen feature networks for perceptual and distribution metrics, with their PyTorch name maps.

Every network takes images (B, H, W, 3) in [-1, 1] (the project's convention) and loads its weights from local
files in their standard PyTorch layouts (`eval.weights` finds the files).
"""
