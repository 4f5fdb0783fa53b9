import json
from types import SimpleNamespace

import numpy as np

from marktune.tensorboard_logger import _rows_from_result_log, matrix_image


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
