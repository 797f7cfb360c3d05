"""Time per training step of one flow layer vs. input size (Fig. 4); see snf_tf/bench/scaling.py.

    python benchmarks/layer_scaling.py [--quick] [--out DIR]     # same as: snf-tf bench scaling
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from snf_tf.bench import scaling  # noqa: E402

if __name__ == "__main__":
    scaling.main()
