"""The ../shared ResNets through cnnzip's loader, zoo and Evaluator equal an independent reference."""

import pytest
import torch

from _reference import ARCHIVE, SHARED, read_test_images, reference_predictions
from cnnzip.data import Loader, load_image_folder
from cnnzip.io import IMAGENET_MEAN, IMAGENET_STD
from cnnzip.measure import Evaluator
from cnnzip.models import create_model, load_weights

pytestmark = [pytest.mark.shared,
              pytest.mark.skipif(not ARCHIVE.exists(), reason="../shared is not beside the repository")]
PER_CLASS = 100


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return load_image_folder(ARCHIVE)


@pytest.fixture(scope="module")
def reference_subset():
    return read_test_images(limit_per_class=PER_CLASS)


def _subset(split):
    idx = torch.cat([torch.nonzero(split.labels == c).flatten()[:PER_CLASS] for c in range(10)])
    return split.subset(idx)


@pytest.mark.parametrize("name, checkpoint", [("resnet20", "resnet20-12fca82f.th"),
                                              ("resnet56", "resnet56-4bfd9763.th")])
def test_accuracy_equals_independent_reference(cifar, reference_subset, name, checkpoint):
    path = SHARED / "models" / checkpoint
    ref_x, ref_y, classes = reference_subset
    assert tuple(classes) == cifar.classes
    ref_pred = reference_predictions(path, ref_x)

    model = load_weights(create_model(name), path).eval()
    sub = _subset(cifar.test)
    assert torch.equal(sub.labels, ref_y)
    batches = Loader(sub, 250, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    x_ours = torch.cat([x for x, _ in batches])
    assert torch.allclose(x_ours, ref_x, atol=1e-5)  # same pixels, same normalisation
    with torch.no_grad():
        pred = model(x_ours).argmax(1)
    assert torch.equal(pred, ref_pred)
    result = Evaluator(batches).evaluate(model)
    assert result.correct == int((ref_pred == ref_y).sum())
    # The shared README reports 81.03% (ResNet-20) and 83.20% (ResNet-56) on the full JPEG test set;
    # the benchmark checks those exactly. A 1,000-image subset must land near them.
    expected = {"resnet20": 0.8103, "resnet56": 0.8320}[name]
    assert abs(result.accuracy - expected) < 0.03
