"""The shared epoch loop (marktune.mark.training): a loss that is not finite stops the run, clearly."""
import pytest

import marktune.mark.evaluation as evaluation
import marktune.mark.runtime as runtime
import marktune.mark.training as training
from conftest import tiny_config
from marktune.mark.training import NonFiniteLossError
from tests.mark.learners import make


def test_nan_loss_is_a_clear_error():
    learner = make(tiny_config(lr_task=1e30, grad_clip=1e30))
    with pytest.raises(NonFiniteLossError, match="phase .* of task 0.*lower"):
        learner.train_next_task()


@pytest.mark.parametrize("module", [training, runtime, evaluation], ids=lambda m: m.__name__)
def test_module_examples_run(module):
    import doctest

    assert doctest.testmod(module).failed == 0
