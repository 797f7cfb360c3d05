"""Moved to :mod:`snf_tf.experiments.bench` (this path works until 0.3): ``snf_tf.bench.scaling``,
``snf_tf.bench.models`` (renamed ``timing``) and ``snf_tf.bench.profile`` are the moved modules."""
