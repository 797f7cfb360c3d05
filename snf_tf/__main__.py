"""``python -m snf_tf`` — the ``snf-tf`` command line (see :mod:`snf_tf.experiments.cli`)."""

import sys

from snf_tf.experiments.cli import main

sys.exit(main())
