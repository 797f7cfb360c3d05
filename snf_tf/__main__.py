"""``python -m snf_tf`` — the ``snf-tf`` command line (see :mod:`snf_tf.cli`)."""

import sys

from snf_tf.cli import main

sys.exit(main())
