import json
from types import SimpleNamespace

import numpy as np

from marktune.tune.display.tensorboard_logger import _rows_from_result_log, matrix_image


def test_matrix_image_colours_trained_cells_and_greys_the_rest():
    image = matrix_image({0: [1.0], 1: [0.0, 0.5]}, 3, cell=2)
    assert image.shape == (6, 6, 3) and image.dtype == np.uint8
    assert tuple(image[0, 0]) == (250, 230, 40)  # accuracy 1: yellow
    assert tuple(image[2, 0]) == (40, 30, 120)  # accuracy 0: dark blue
    assert tuple(image[0, 4]) == (128, 128, 128)  # not trained yet: grey
    assert tuple(image[2, 2]) != tuple(image[2, 0])


def test_rows_reported_before_a_driver_restart_come_back_from_result_json(tmp_path):
    lines = [json.dumps({"tasks_done": 1, "val_row": [0.9]}),
             json.dumps({"tasks_done": 2, "val_row": [0.8, 0.7]}),
             '{"tasks_done": 3, "val_ro']  # cut off by a crash
    (tmp_path / "result.json").write_text("\n".join(lines))
    trial = SimpleNamespace(local_path=str(tmp_path))
    assert _rows_from_result_log(trial) == {0: [0.9], 1: [0.8, 0.7]}
    assert _rows_from_result_log(SimpleNamespace(local_path=str(tmp_path / "none"))) == {}


def test_tune_callback_writes_the_diagnostics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from marktune.tune.display.tensorboard_logger import MarkTensorBoardCallback

    trial = SimpleNamespace(trial_id="t1", local_path=str(tmp_path), config={}, init_local_path=lambda: None)
    callback = MarkTensorBoardCallback(searched=[], num_tasks=2)
    for step, norm in ((1, 3.5), (2, 3.25)):
        callback.log_trial_result(step, trial, {"tasks_done": step, "mean_val_acc": 0.9, "mean_test_acc": 0.9,
                                                "bwt_val": 0.0, "bwt_test": 0.0, "kb_weight_norm": norm,
                                                "kb_weight_norm_block_0": norm / 2, "mask_mean_block_0": 0.5})
    callback._writers["t1"].flush()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("kb/weight_norm")] == [(1, 3.5), (2, 3.25)]
    assert [e.value for e in events.Scalars("kb/weight_norm_block_0")] == [1.75, 1.625]
    assert [e.value for e in events.Scalars("masks/mean_block_0")] == [0.5, 0.5]
