"""The software and hardware a run trains on, as the tags of its MLflow run."""

import platform

import numpy
import PIL
import torch

from training.environment import cpu_model, environment_tags


def test_the_tags_name_the_libraries_and_processor_a_run_trains_on():
    tags = environment_tags(torch.device("cpu"))
    assert tags == {
        "depthlab.env.python": platform.python_version(),
        "depthlab.env.torch": torch.__version__,
        "depthlab.env.numpy": numpy.__version__,
        "depthlab.env.pillow": PIL.__version__,
        "depthlab.env.cpu": cpu_model(),
        "depthlab.env.device": "cpu",
        "depthlab.env.threads": str(torch.get_num_threads()),
    }
    assert cpu_model() and "\n" not in cpu_model()
