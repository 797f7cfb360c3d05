"""ms per training batch and per sample of the nine Table-1 models; see snf_tf/bench/models.py.

    python benchmarks/model_timing.py [--quick] [--out DIR]      # same as: snf-tf bench models
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from snf_tf.bench import models  # noqa: E402

if __name__ == "__main__":
    models.main()
