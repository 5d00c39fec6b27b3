"""TFDS builders of the datasets this project introduces or prepares from local copies (no downloads):

    reds    the REDS editing benchmark: sharp frames with their real motion-blurred frames (reds.py)
"""
