"""tf.distribute: MirroredStrategy on 2 logical CPUs matches one device; MultiWorkerMirrored runs.

Each case runs in a fresh Python process: logical devices and TF_CONFIG must be set before
TensorFlow initialises.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.join(os.path.dirname(__file__), "distributed")
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_mirrored_two_devices_match_one_device(kind):
    out = subprocess.run([sys.executable, os.path.join(HERE, "mirrored.py"), kind], env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["two"]["replicas"] == 2
    np.testing.assert_allclose(result["two"]["losses"], result["one"]["losses"], rtol=1e-6)
    np.testing.assert_allclose(result["two"]["exact_nll"], result["one"]["exact_nll"], rtol=1e-6)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multi_worker_mirrored_trains_on_two_local_workers():
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = dict(ENV, TF_CONFIG=json.dumps({"cluster": cluster,
                                              "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen([sys.executable, os.path.join(HERE, "multi_worker.py")],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    results = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=240)
            assert proc.returncode == 0, stderr[-3000:]
            results.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for result in results:
        assert result["replicas"] == 2
        assert np.all(np.isfinite(result["losses"])) and len(result["losses"]) == 4
    # both workers hold the same synchronised weights
    np.testing.assert_allclose(results[0]["weights_sum"], results[1]["weights_sum"], rtol=1e-6)
