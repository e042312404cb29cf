"""Every table names the weights, device, dtype and batch size of the images behind it."""

from __future__ import annotations

import pandas as pd

from fewstep.core import provenance
from fewstep.grid import Grid
from tests.conftest import study_of


def test_tables_carry_the_runtime_of_their_images_per_cell_or_over_the_sweep(raw_demo):
    from fewstep.core.config import validate

    config = study_of(validate(raw_demo))
    models = Grid(config).models
    images = pd.DataFrame(
        {
            "cell_id": ["a/x/1", "a/x/1", "b/x/2"],
            "weights_digest": ["d1", "d1", "d2"],
            "device_name": ["NVIDIA H200", "NVIDIA H200", "NVIDIA H100 80GB HBM3"],
            "dtype": ["bfloat16"] * 3,
            "batch_size": [4, 2, 4],  # an out-of-memory retry halved the batch of one image
        }
    )
    summary = provenance.stamp(
        pd.DataFrame({"cell_id": ["a/x/1", "b/x/2"], "mean": [0.5, 0.6]}), config, models, images
    )
    assert summary["weights_digest"].tolist() == ["d1", "d2"]
    assert summary["device_name"].tolist() == ["NVIDIA H200", "NVIDIA H100 80GB HBM3"]
    assert summary["batch_size"].tolist() == ["2;4", "4"]
    assert summary["config_hash"].nunique() == 1 and summary["mean"].tolist() == [0.5, 0.6]
    regime = provenance.stamp(
        pd.DataFrame({"backbone": ["a"]}), config, models, images
    )  # no cell_id: the sweep
    assert regime["device_name"].iloc[0] == "NVIDIA H100 80GB HBM3;NVIDIA H200"
    assert regime["dtype"].iloc[0] == "bfloat16"
    assert "weights_digest" not in provenance.stamp(
        pd.DataFrame({"x": [1]}), config, models
    )  # without images
