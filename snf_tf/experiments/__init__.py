"""The paper's lab, beside the library: its experiments by name with their reference configs
(:mod:`.configs`, re-exported here), training one into a run folder (:mod:`.training`,
:mod:`.run_folder`), the collapse guard (:mod:`.guard`), the ``snf-tf`` command (:mod:`.cli`)
and the benchmarks (:mod:`.bench`).

The library (layers, ``FlowModel``, TFP views, export, data, callbacks, architectures) imports
nothing from here (``tests/test_layering.py``).

>>> cfg = config("selfnorm_cnn_mnist", epochs=5)
>>> model = build_model(cfg)
"""

from snf_tf.experiments.configs import (
    EXPERIMENTS,
    GECO_RATE,
    GLOW_INVERSE_ERROR,
    GUARD_VAL_JUMP,
    NULLABLE,
    Experiment,
    build_model,
    config,
    datasets,
    get,
    names,
    parse_duration,
    parse_override,
    setting_names,
)

__all__ = ["EXPERIMENTS", "Experiment", "GECO_RATE", "GLOW_INVERSE_ERROR", "GUARD_VAL_JUMP",
           "NULLABLE", "build_model", "config", "datasets", "get", "names", "parse_duration",
           "parse_override", "setting_names"]
