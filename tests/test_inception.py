"""The Flax FID Inception-v3 is pytorch-fid's network: same weights, same inputs, same pool features and logits.

tests/fixtures/inception_pytorch_fid.npz holds pytorch-fid 0.3.0's outputs (its `InceptionV3([3])`, resize and
2 x - 1 included, and the logits of its fc) with the seeded stand-in weights of
`inception_weights.random_state_dict(names, 0)`, written by tests/helpers/make_inception_fixture.py in a
throw-away virtualenv with torch; here the same weights are redrawn (numpy only) and go through the project's
converter (`variables_from_state_dict`), so the name mapping and every transpose are checked too.
Inputs: [2, 32, 32, 3] (upsampled to 299) and [1, 311, 305, 3] (downsampled, not square).
"""

import importlib.util
import os

import jax
import numpy as np
import pytest

from vdm.errors import ConfigError
from vdm.metrics import inception, inception_weights

HERE = os.path.dirname(__file__)
FIXTURE = os.path.join(HERE, "fixtures", "inception_pytorch_fid.npz")
# float32 against torch's float32 CPU kernels: largest |difference| / largest |reference value|; measured 4.1e-7
# (pool) and 5.6e-7 (logits) on the small inputs, 4.0e-7 and 1.3e-6 on the large one
RTOL = 1e-5


def _helper():
    spec = importlib.util.spec_from_file_location("make_inception_fixture",
                                                  os.path.join(HERE, "helpers", "make_inception_fixture.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def variables():
    reference = np.load(FIXTURE)
    names = inception_weights.network_names_and_shapes()
    return inception_weights.variables_from_state_dict(
        inception_weights.random_state_dict(names, int(reference["seed"])))


@pytest.mark.parametrize("name", ["small", "large"])
def test_flax_inception_equals_pytorch_fid_on_the_same_weights(variables, name):
    reference = np.load(FIXTURE)
    images = _helper().inputs()[name]
    pool, logits = jax.jit(inception.FIDInceptionV3().apply)(variables, images)
    for ours, theirs in ((pool, reference[f"{name}_pool"]), (logits, reference[f"{name}_logits"])):
        ours = np.asarray(ours)
        assert ours.shape == theirs.shape
        error = np.abs(ours - theirs).max() / np.abs(theirs).max()
        assert error < RTOL, (name, error)
    assert np.abs(reference[f"{name}_pool"]).max() > 0.5  # the stand-in weights keep the features O(1)


def test_converter_refuses_wrong_names_shapes_and_files(tmp_path):
    names = inception_weights.network_names_and_shapes()
    state = inception_weights.random_state_dict(names, 0)
    bad_shape = dict(state, **{"fc.bias": np.zeros(1000, np.float32)})
    with pytest.raises(ConfigError, match="fc.bias has shape"):
        inception_weights.variables_from_state_dict(bad_shape)
    missing = {k: v for k, v in state.items() if k != "Mixed_7c.branch_pool.conv.weight"}
    with pytest.raises(ConfigError, match="missing"):
        inception_weights.variables_from_state_dict(missing)
    wrong = tmp_path / inception_weights.REFERENCE_FILE
    wrong.write_bytes(b"not the weights")
    with pytest.raises(ConfigError, match="SHA-256"):
        inception_weights.read_pth(str(wrong))
    with pytest.raises(ConfigError, match="no Inception weights at .*download"):
        inception_weights.load_variables(str(tmp_path / "absent.npz"))
    assert inception_weights.main(["--random=3", f"--out={tmp_path / 'w.npz'}"]) == 0
    loaded, digest = inception_weights.load_variables(str(tmp_path / "w.npz"))
    assert digest == inception_weights.sha256(str(tmp_path / "w.npz"))
    redrawn = inception_weights.random_state_dict([("fc.bias", (1008,))], 3)["fc.bias"]  # one generator per name
    np.testing.assert_array_equal(loaded["params"]["fc"]["bias"], redrawn)
