"""tf.distribute: MirroredStrategy on 2 logical CPUs matches one device; MultiWorkerMirrored on 2
workers matches one process.

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

pytestmark = pytest.mark.slow  # multi-process and multi-device training

HERE = os.path.join(os.path.dirname(__file__), "distributed")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The scripts run from tests/distributed: put this checkout's snf_tf first (an editable install
# elsewhere would otherwise be imported instead of the code under test).
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
           PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p))


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_mirrored_two_devices_match_one_device(kind):
    out = subprocess.run([sys.executable, os.path.join(HERE, "mirrored.py"), kind], env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["snf_tf"].startswith(REPO + os.sep), result["snf_tf"]
    assert result["two"]["replicas"] == 2
    np.testing.assert_allclose(result["two"]["losses"], result["one"]["losses"], rtol=1e-6)
    np.testing.assert_allclose(result["two"]["exact_nll"], result["one"]["exact_nll"], rtol=1e-6)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_env(cluster, index):
    return dict(ENV, TF_CONFIG=json.dumps({"cluster": cluster,
                                           "task": {"type": "worker", "index": index}}))


def test_multi_worker_mirrored_equals_one_process_on_the_same_global_batches():
    """Both workers end with the same trainable weights, and those of one process trained with
    SGD on the same global batches (float64): a desynchronised worker or a wrong gradient
    scaling (e.g. no 1/replicas) fails. Trainable weights only: never a NaN == NaN."""
    script = os.path.join(HERE, "multi_worker.py")
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = [subprocess.Popen([sys.executable, script], env=_worker_env(cluster, index),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for index in range(2)]
    procs.append(subprocess.Popen([sys.executable, script, "single"], env=ENV,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
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
    *workers, single = results
    assert single["replicas"] == 1
    for result in results:  # the code of this checkout, not an installed copy
        assert result["snf_tf"].startswith(REPO + os.sep), result["snf_tf"]
    names = set(single["trainable"])
    # kernel, bias, inverse_kernel of the SNF layer; kernel, bias of the exact one
    assert len(names) == 5 and not any("log_det" in name for name in names), names
    for worker in workers:
        assert worker["replicas"] == 2
        assert len(worker["losses"]) == 4 and np.all(np.isfinite(worker["losses"]))
        assert set(worker["trainable"]) == names
        for name in names:
            np.testing.assert_array_equal(worker["initial"][name], single["initial"][name],
                                          err_msg=name)
    for name in sorted(names):
        reference = np.asarray(single["trainable"][name])
        assert np.all(np.isfinite(reference)), name
        moved = np.max(np.abs(reference - np.asarray(single["initial"][name])))
        assert moved > 1e-3, (name, moved)  # training moved it far beyond the tolerances below
        for worker in workers:
            got = np.asarray(worker["trainable"][name])
            assert np.all(np.isfinite(got)), name
            np.testing.assert_allclose(got, reference, rtol=1e-9, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(workers[0]["trainable"][name], workers[1]["trainable"][name],
                                   rtol=1e-12, atol=1e-14, err_msg=name)
    for worker in workers:  # the logged loss curve (float32 logs) is the global-batch one too
        np.testing.assert_allclose(worker["losses"], single["losses"], rtol=1e-6)
