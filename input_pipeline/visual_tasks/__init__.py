"""Data of the GENIE visual-prompting method (design §4): task pairs, labelled sources, 2 x 2 prompt grids.

- pairs:     `make_<task>(image, seed) -> (x, y)` per task, `(H, W, 3)` float32 in [0, 1], TF ops.
- canny:     Canny edges in TF ops (the edge task's output).
- render:    label maps as colours (VOC palette, viridis-like depth ramp).
- labelled:  LabelledFolderSource (images folder + maps folder) and `create_visual_source`.
- examples:  VISUAL_TASKS / OOD_TASKS registries and `visual_prompt_example_fn` (index -> reference pair + query).
- grid:      `assemble_grid` (hint, target, answer mask) and `check_grid`.
- batches:   the method's `config.data`, its checks, `VisualPromptBatches` (training) and `fixed_task_examples`
             (evaluation); imported as `input_pipeline.visual_tasks.batches`.
"""
from input_pipeline.visual_tasks.canny import canny
from input_pipeline.visual_tasks.examples import (ALL_TASKS, OOD_TASKS, SYNTHESISABLE_TASKS, TASK_IDS, VISUAL_TASKS,
                                                  VisualTask, servable_tasks, visual_prompt_example_fn)
from input_pipeline.visual_tasks.grid import HINT_FILL, assemble_grid, check_grid
from input_pipeline.visual_tasks.labelled import LabelledFolderSource, create_visual_source
from input_pipeline.visual_tasks.pairs import (make_colourisation, make_contrast, make_deblurring, make_denoising,
                                               make_depth, make_deraining, make_edges, make_inpainting,
                                               make_segmentation, make_super_resolution)

__all__ = ["ALL_TASKS", "HINT_FILL", "LabelledFolderSource", "OOD_TASKS", "SYNTHESISABLE_TASKS", "TASK_IDS",
           "VISUAL_TASKS", "VisualTask", "assemble_grid", "canny", "check_grid", "create_visual_source",
           "make_colourisation", "make_contrast", "make_deblurring", "make_denoising", "make_depth",
           "make_deraining", "make_edges", "make_inpainting", "make_segmentation", "make_super_resolution",
           "servable_tasks", "visual_prompt_example_fn"]
