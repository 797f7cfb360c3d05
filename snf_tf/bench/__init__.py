"""Benchmarks, run with ``snf-tf bench NAME`` (or ``python benchmarks/NAME.py``).

- :mod:`snf_tf.bench.scaling` — one layer's training-step time vs. input dimension (Fig. 4).
- :mod:`snf_tf.bench.models` — ms per batch and per sample of the nine Table-1 models (Table 3).

Each prints a short table and writes JSON and a PNG to ``--out``.
"""
