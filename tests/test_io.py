"""cnnzip.io: one door for every file, run state that resumes or refuses, atomic writes."""

import json

import pytest
import torch

import cnnzip
import cnnzip.io.registry as registry
from cnnzip.errors import ConfigError, ModelError
from cnnzip.io import ModelMeta, load, load_any, refuse_changes, register_format, resume_state, save_model
from cnnzip.models import create_model

META = ModelMeta((0.5,), (0.25,), (1, 8, 8))


def test_load_picks_the_reader_by_the_files_first_bytes(tmp_path):
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=10, in_channels=1).eval()
    save_model(tmp_path / "m.pt", model, META)
    from cnnzip.deep import WeightSharing, save_compressed, share_weights

    shared, books = share_weights(model, WeightSharing(conv_bits=3, fc_bits=3))
    save_compressed(tmp_path / "m.cnnz", shared, books, META)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "m.pt")[0](x), model(x))
        assert torch.equal(load(tmp_path / "m.cnnz")[0](x), shared(x))
        assert torch.equal(cnnzip.load(tmp_path / "m.cnnz")[0](x), shared(x))  # the package's own door
    # The suffix plays no part: a compressed file under another name is still read as one.
    (tmp_path / "renamed.pt").write_bytes((tmp_path / "m.cnnz").read_bytes())
    with torch.no_grad():
        assert torch.equal(load_any(tmp_path / "renamed.pt")[0](x), shared(x))
    assert {"model file", "compressed model"} <= {f.name for f in registry.formats()}


def test_a_new_format_registers_its_reader(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_FORMATS", dict(registry._FORMATS))  # the test's format goes away after it
    model = create_model("small_cnn", num_classes=10, in_channels=1).eval()
    seen = []

    def read(path, m):
        seen.append((path.name, m))
        return model, META

    register_format("test format", b"CNNZTEST", read, ".test")
    (tmp_path / "a.test").write_bytes(b"CNNZTEST and then the body")
    assert load(tmp_path / "a.test") == (model, META) and seen == [("a.test", None)]


def test_unknown_or_missing_files_get_one_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelError, match="not a file cnnzip can read.*model file.*compressed model"):
        load(tmp_path / "notes.txt")
    with pytest.raises(ModelError, match="no such model file"):
        load(tmp_path / "missing.pt")
    with pytest.raises(ModelError, match="not a file"):
        load(tmp_path)
    torch.save({"w": torch.zeros(2)}, tmp_path / "raw.pt")  # raw weights: a torch file, not a model file
    with pytest.raises(ModelError, match="not a cnnzip model file"):
        load(tmp_path / "raw.pt")


def test_run_state_resumes_the_same_run_and_refuses_another(tmp_path):
    path = tmp_path / "state.json"
    fresh = {"config": {"drop": 0.02, "iterations": 2, "subject": "abc"}, "trials": []}
    assert resume_state(path, fresh, "test run") is fresh
    path.write_text(json.dumps({"config": {"drop": 0.02, "iterations": 1, "subject": "abc"}, "trials": [1]}))
    resumed = resume_state(path, fresh, "test run", free=("iterations",))
    assert resumed["trials"] == [1] and resumed["config"]["iterations"] == 2  # a free setting takes its new value
    with pytest.raises(ConfigError, match=r"other settings \(iterations\)"):
        resume_state(path, fresh, "test run")
    with pytest.raises(ConfigError, match="another model or other validation data"):
        refuse_changes({"subject": "abc"}, {"subject": "xyz"}, tmp_path, "test run")
    path.write_text("{ cut short")
    with pytest.raises(ConfigError, match="not a readable run state"):
        resume_state(path, fresh, "test run")
