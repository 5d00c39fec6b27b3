"""The instructions the Plugin-Selector learns to route (Diff-Plugin §3.4): a bank of phrasings per task, some
held out for evaluation.

The authors built their instruction data by asking a language model for many ways to request each task and
never released it; this bank is ours: ten phrasings per task of different form (imperative, question, a
description of the wish), the last two of each held out, so the held-out score measures whether the selector
learned the task and not the sentence.

    PHRASINGS[task]              every phrasing of the task
    phrasings(task, split)       "train": all but the last HELD_OUT; "heldout": the last HELD_OUT
"""
from __future__ import annotations

HELD_OUT = 2
SPLITS = ("train", "heldout")

PHRASINGS: dict[str, tuple[str, ...]] = {
    "desnow": ("remove the snow", "get rid of the snowflakes in this photo", "make it look like it is not snowing",
               "clear the falling snow", "desnow this image", "can you take the snow out of the picture",
               "I want the scene without snowfall", "erase the snow particles",
               "please remove the snowflakes", "show me this picture without the snowfall"),
    "dehaze": ("remove the haze", "make the image less foggy", "clear up the fog", "dehaze this photo",
               "get rid of the mist", "can you make the air look clear", "remove the smog from the scene",
               "I want a crisp view without haze", "please take away the fog", "make the hazy photo clear"),
    "deblur": ("remove the blur", "make the photo sharp", "fix the motion blur", "deblur this image",
               "undo the camera shake", "can you make it less blurry", "restore the blurred details",
               "I want a sharp version of this", "please fix the blurry photo", "sharpen the shaky picture"),
    "derain": ("remove the rain", "get rid of the rain streaks", "make it look like it is not raining",
               "derain this photo", "clear the raindrops from the image", "can you take out the rain",
               "I want the scene without rainfall", "erase the rain lines", "please remove the rain",
               "show this picture on a dry day"),
    "lowlight": ("brighten the image", "enhance the low light photo", "make the dark photo brighter",
                 "fix the underexposure", "lighten this picture", "can you make it less dark",
                 "improve the night shot", "I want to see the details in the dark",
                 "please raise the exposure", "make this dim photo well lit"),
    "face": ("restore the face", "enhance the portrait", "fix the low quality face", "make the face sharp and clear",
             "repair the degraded portrait", "can you restore this old face photo", "improve the face details",
             "I want a high quality version of this face", "please clean up the face",
             "bring back the details of the face"),
    "demoire": ("remove the moire pattern", "get rid of the screen stripes", "demoire this photo",
                "clean the moire artifacts", "remove the wavy lines from the screen photo",
                "can you take out the interference pattern", "fix the rainbow stripes", "I want it without moire",
                "please remove the moire", "erase the screen pattern"),
    "highlight": ("remove the highlights", "get rid of the specular reflections", "remove the glare",
                  "take away the shiny spots", "reduce the reflections on the surface",
                  "can you remove the bright reflections", "fix the overexposed shine",
                  "I want the object without glare", "please remove the specular highlights",
                  "make the surface look matte"),
}


def phrasings(task: str, split: str) -> tuple[str, ...]:
    """The task's phrasings of `split` ("train": all but the last HELD_OUT, "heldout": the last HELD_OUT)."""
    if task not in PHRASINGS:
        raise ValueError(f"no instructions for task {task!r}; tasks: {', '.join(PHRASINGS)}")
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is invalid; allowed: {', '.join(SPLITS)}")
    bank = PHRASINGS[task]
    return bank[:-HELD_OUT] if split == "train" else bank[-HELD_OUT:]
