"""Shared fixtures."""

import pytest
import torch


@pytest.fixture
def digits_model(tmp_path):
    """make(epochs) -> the path of a small CNN trained on scikit-learn's digits, saved as a cnnzip model file
    (what `cnnzip demo` trained before it became the whole demo)."""
    from cnnzip.data import Loader, load_digits, train_val_split
    from cnnzip.io import ModelMeta, save_model
    from cnnzip.models import create_model
    from cnnzip.train import TrainConfig, fit

    def make(epochs: int, seed: int = 0):
        ds = load_digits()
        train, _ = train_val_split(ds.train, val_size=0.1, seed=seed)
        torch.manual_seed(seed)
        model = create_model("small_cnn", num_classes=ds.num_classes, in_channels=ds.in_channels)
        batches = Loader(train, 64, shuffle=True, mean=ds.mean, std=ds.std, seed=seed)
        fit(model, batches, TrainConfig(epochs=epochs, lr=0.05, seed=seed), progress=False, device="cpu")
        meta = ModelMeta(ds.mean, ds.std, (ds.in_channels, *ds.image_size), ds.classes)
        return save_model(tmp_path / f"digits-{epochs}.pt", model.eval(), meta)
    return make
