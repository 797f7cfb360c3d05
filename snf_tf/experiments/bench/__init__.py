"""Benchmarks, run with ``snf-tf bench NAME``.

- :mod:`.scaling` (``snf-tf bench scaling``) — one layer's training-step time vs. input
  dimension (Fig. 4).
- :mod:`.timing` (``snf-tf bench models``) — ms per batch and per sample of the nine Table-1
  models (Table 3).
- :mod:`.profile` (``snf-tf bench profile NAME``) — where one experiment's step spends its time.

Each prints a short table and writes JSON and a PNG to ``--out``.
"""
