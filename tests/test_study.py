"""The multitask study's parts that need no training: the single-task models' inputs in a sequence, the order
they are applied in, arm configs with one budget, and resuming arm by arm."""
import json
import os

import numpy as np
import pytest

from editdiff.studies import multitask as study
from input_pipeline.config import TASKS


def _batch(tasks):
    n = 2
    labels = np.array([[float(t in tasks) for t in TASKS]] * n, np.float32)
    strengths = np.array([[0.4, 0.05, 2.0, 0.03]] * n, np.float32) * labels[:, [0, 1, 4, 4]]
    image = np.linspace(-1, 1, n * 8 * 8 * 3, dtype=np.float32).reshape(n, 8, 8, 3)
    mask = np.ones((n, 8, 8, 1), np.float32)
    mask[:, :2] = 0.0
    return {"source": image, "target": -image, "reference": np.full_like(image, 0.5), "mask": mask,
            "edit_vector": np.concatenate([strengths, labels], 1), "task_labels": labels}


def test_a_single_task_model_sees_only_its_task():
    batch = _batch(("blur", "grain", "colour"))
    current = np.zeros_like(batch["source"])
    step = study.single_task_step(batch, current, "grain")
    np.testing.assert_allclose(step["edit_vector"][0], [0, 0.05, 0, 0, 0, 1, 0, 0, 0])
    assert step["source"] is current and not step["reference"].any() and step["mask"].all()
    colour = study.single_task_step(batch, current, "colour")
    np.testing.assert_array_equal(colour["edit_vector"][0], [0, 0, 0, 0, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(colour["reference"], batch["reference"])


def test_combinations_apply_the_single_task_models_in_the_compositing_order():
    calls = []

    def editor(task):
        def edit(step_batch, k):
            calls.append((task, k))
            return step_batch["source"] + 1.0
        return edit

    batch = _batch(("grain", "blur", "colour"))
    out = study.apply_in_sequence(batch, {t: editor(t) for t in TASKS})
    assert calls == [("blur", 0), ("colour", 1), ("grain", 2)]
    np.testing.assert_allclose(out, batch["source"] + 3.0)  # each on the previous output


def test_every_arm_gets_the_same_data_and_budget():
    configs = {arm: study.arm_config(arm, "tiny", 7, task="blur") for arm in study.ARMS}
    assert {c.train.num_steps for c in configs.values()} == {7}
    assert len({json.dumps(c.data.eval.to_dict()) for c in configs.values()}) == 1
    assert configs["pix2pix"].method == "pix2pix" and configs["palette"].model.conditioning == "concat"
    assert configs["ours-single"].data.tasks == ("blur",) and configs["mapping-depth-3"].model.mapping.depth == 3


def test_an_arm_with_its_final_evaluation_is_not_trained_again(tmp_path, monkeypatch):
    config = study.arm_config("ours", "tiny", 3)
    os.makedirs(tmp_path / "eval")
    (tmp_path / "eval" / "step_0000003.json").write_text("{}")
    monkeypatch.setattr(study.modes, "train", lambda *a: pytest.fail("trained again"))
    study.train_arm(config, str(tmp_path))


def test_unknown_arms_are_refused():
    with pytest.raises(ValueError, match="--arms gan is invalid; allowed: ours, palette"):
        study.run_study("unused", "tiny", arms=("gan",))
