"""Recipes (one schema: YAML, --set, Python) and `cnnzip compress` / `cnnzip.compress`, which run them."""

from __future__ import annotations

import json

import pytest
import yaml

from cnnzip.cli import main
from cnnzip.errors import ConfigError
from cnnzip.search.recipe import (
    DeepCompressStep,
    FinetuneSettings,
    PruneStep,
    Recipe,
    apply_overrides,
    default_recipe,
)


def test_a_recipe_round_trips_through_its_three_spellings():
    recipe = Recipe(steps=(("prune", PruneStep(method="fpgm", round_to=8)), ("deep-compress", DeepCompressStep(6, 5))),
                    drop=0.02, finetune=FinetuneSettings(final_epochs=2, distill="response"))
    assert Recipe.from_dict(recipe.as_dict()) == recipe
    assert Recipe.from_dict(yaml.safe_load(yaml.safe_dump(recipe.as_dict()))) == recipe
    # --set spells the same settings
    data = apply_overrides(default_recipe("size").as_dict(), ["drop=0.02", "prune.method=fpgm", "prune.round_to=8",
                                                               "deep-compress.conv_bits=6", "finetune.final_epochs=2",
                                                               "finetune.distill=response"])
    assert Recipe.from_dict(data) == recipe
    assert Recipe.from_dict({"steps": "prune,quantize", "objective": "latency-b1"}).writes == ".int8.onnx"
    assert Recipe.from_dict({"target": 0.9}).target == 0.9 and Recipe.from_dict({"target": 0.9}).drop is None
    search = recipe.to_search()
    assert (search.pipeline.order, search.pipeline.structured, search.pipeline.conv_bits, search.drop) == \
        ("ns-dc", "fpgm", 6, 0.02)
    assert default_recipe("latency-b256").to_search().pipeline.quantize == "int8"


@pytest.mark.parametrize("data, message", [
    ({"steps": ["prune", "lowrank"]}, "unknown step 'lowrank'"),
    ({"steps": ["prune", "prune"]}, "appears 2 times"),
    ({"steps": ["quantize", "prune"]}, "cannot follow 'quantize'"),
    ({"steps": ["prune", "deep-compress", "quantize"]}, "dense weights"),
    ({"steps": ["deep-compress"], "objective": "latency-b1"}, "latency objective"),
    ({"steps": [{"prune": {"methd": "l1"}}]}, "no setting 'methd'"),
    ({"steps": [{"prune": {"method": "magic"}}]}, "prune.method"),
    ({"steps": [{"deep-compress": {"conv_bits": 12}}]}, "conv_bits"),
    ({"drop": 0.01, "target": 0.9}, "exactly one of drop"),
    ({"drop": 1.5}, "drop must be"),
    ({"search": {"step": 0.0}}, "0 < step"),
    ({"search": {"strategy": "random"}}, "search.strategy"),
    ({"finetune": {"distill": "response"}}, "give it epochs"),
    ({"steps": ["deep-compress", "prune"], "finetune": {"structured_epochs": 1}}, "between prune and"),
    ({"speed": 1}, "no setting 'speed'"),
    ({"steps": []}, "at least one step"),
    ({"steps": ["decompose", "deep-compress"]}, "cannot run in that order"),
    ({"steps": ["quantize"]}, "cnnzip quantize"),
    ({"target": True}, "target must be"),
    ({"finetune": {"lr": True}}, "finetune.lr"),
    ({"steps": ["prune", "decompose", "deep-compress"]}, "at most two strengths"),
])
def test_a_wrong_recipe_gets_one_clear_error(data, message):
    with pytest.raises(ConfigError, match=message):
        Recipe.from_dict(data)


def test_set_spells_what_a_file_would():
    data = apply_overrides({}, ["steps=prune,quantize", "prune.round_to=8", "finetune.lr=1e-3",
                                "finetune.final_epochs=1", "drop=1e-05"])
    recipe = Recipe.from_dict(data)
    assert recipe.settings("prune").round_to == 8 and recipe.finetune.lr == 0.001 and recipe.drop == 1e-05
    assert Recipe.from_dict(apply_overrides({}, ["prune.method=fpgm"])).settings("prune").method == "fpgm"


def test_set_names_the_missing_step():
    with pytest.raises(ConfigError, match="no 'quantize' step"):
        apply_overrides(default_recipe().as_dict(), ["quantize.calibration_images=64"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(default_recipe().as_dict(), ["search.step"])


def test_compress_is_the_search_its_recipe_describes_and_repeats_from_its_record(tmp_path, capsys, digits_model):
    model = digits_model(5)
    grid = ["--set", "search.step=0.25", "--set", "search.max_ratio=0.75", "--set", "search.margin=1"]
    assert main(["compress", "--print-recipe", "--drop", "0.03", *grid]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert Recipe.from_dict(printed).search.step == 0.25
    assert main(["compress", str(model), "--drop", "0.03", *grid, "--out", str(tmp_path / "c"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy (evaluated once)" in out and (tmp_path / "c" / "best.cnnz").exists()
    recorded = json.loads((tmp_path / "c" / "recipe.json").read_text())
    assert Recipe.from_dict(recorded) == Recipe.from_dict(printed)
    # The same search, spelled with `cnnzip search`'s flags, finds the same winner.
    assert main(["search", str(model), "--drop", "0.03", "--step", "0.25", "--max-ratio", "0.75", "--margin", "1",
                 "--structured", "l1", "--out", str(tmp_path / "s"), "--quiet"]) == 0
    # And the recorded recipe repeats the run exactly.
    assert main(["compress", str(model), "--recipe", str(tmp_path / "c" / "recipe.json"), "--out",
                 str(tmp_path / "again"), "--quiet"]) == 0
    capsys.readouterr()
    best = [json.loads((tmp_path / d / "result.json").read_text())["best"] for d in ("c", "s", "again")]
    for b in best:
        b.pop("seconds")
    assert best[0] == best[1] == best[2] and best[0] is not None
    # A rerun with another recipe into the same --out is refused, naming what differs.
    assert main(["compress", str(model), "--drop", "0.05", *grid, "--out", str(tmp_path / "c"), "--quiet"]) == 2
    assert "other settings (the recipe)" in capsys.readouterr().err


def test_compress_refuses_bad_input_before_any_work(tmp_path, capsys, digits_model):
    model = digits_model(1)
    for args, message in ((["--set", "steps=prune,magic"], "unknown step 'magic'"),
                          (["--recipe", str(tmp_path / "none.yaml")], "no such file"),
                          (["--workers", "0"], "--workers")):
        assert main(["compress", str(model), *args, "--out", str(tmp_path / "x")]) == 2
        assert message in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("steps: [prune\n")
    assert main(["compress", str(model), "--recipe", str(tmp_path / "bad.yaml")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_the_python_twin(tmp_path):
    import torch

    from cnnzip import compress
    from cnnzip.data import Loader, load_digits, train_val_split
    from cnnzip.io import ModelMeta
    from cnnzip.measure import Evaluator
    from cnnzip.models import create_model
    from cnnzip.train import TrainConfig, fit

    ds = load_digits()
    train, val = train_val_split(ds.train, val_size=0.2, seed=0)
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=10, in_channels=1)
    batches = Loader(train, 64, shuffle=True, mean=ds.mean, std=ds.std)
    fit(model, batches, TrainConfig(epochs=4, lr=0.05), progress=False)
    meta = ModelMeta(ds.mean, ds.std, (1, 8, 8), ds.classes)
    recal = [x for x, _ in Loader(train, 128, mean=ds.mean, std=ds.std)]
    result = compress(model.eval(), Evaluator(Loader(val, 500, mean=ds.mean, std=ds.std)),
                      {"drop": 0.03, "steps": ["deep-compress"], "finetune": {"final_epochs": 1}},
                      meta=meta, run_dir=tmp_path / "run", train=batches, recalibration=recal,
                      overrides=["search.step=0.25", "search.max_ratio=0.75"])
    assert result.best is not None and result.path.suffix == ".cnnz" and result.finetuned
    assert result.final_accuracy >= result.target - 0.05


def test_a_low_rank_step_is_searchable(tmp_path):
    """`decompose` as a recipe step: the search's 'lr' axis removes its ratio of the MACs with low-rank factors,
    and the candidate's file reloads to the same model."""
    import torch

    from cnnzip.io import ModelMeta, load
    from cnnzip.measure import count_macs
    from cnnzip.models import create_model
    from cnnzip.search.candidates import Compressor

    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, width=0.5).eval()
    meta = ModelMeta((0.5,) * 3, (0.25,) * 3, (3, 32, 32))
    pipeline = Recipe.from_dict({"steps": ["prune", "decompose"], "search": {"recalibrate": 0}}).to_search().pipeline
    assert pipeline.order == "ns-lr"
    compressor = Compressor(model, pipeline, meta, workdir=tmp_path)
    before = count_macs(model, (3, 32, 32))
    candidate = compressor.build((0.0, 0.5), keep_file=tmp_path / "c.pt")
    assert count_macs(candidate.model, (3, 32, 32)) <= 0.5 * before * 1.02
    reloaded, _ = load(tmp_path / "c.pt")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(reloaded(x), candidate.model(x))


def test_a_new_family_registers_itself_and_touches_nothing_else(tmp_path):
    """A method registered from outside (here, a test's toy that scales weights down) is a recipe step and a
    search axis at once: `Recipe`, `Pipeline` and the candidate builder find it in `cnnzip.methods`."""
    import copy
    from dataclasses import dataclass

    import torch

    from cnnzip.io import ModelMeta
    from cnnzip.methods import METHODS, Method, register_method
    from cnnzip.models import create_model
    from cnnzip.search.candidates import Compressor

    @dataclass(frozen=True)
    class ShrinkStep:
        pass

    def shrink(model, ratio, context):
        model = copy.deepcopy(model)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 - ratio)
        return model

    register_method(Method("shrink", ShrinkStep, axis="sh", after=("ns",), apply=shrink, summary="a test's toy"))
    try:
        recipe = Recipe.from_dict({"steps": ["prune", "shrink"], "search": {"recalibrate": 0}})
        pipeline = recipe.to_search().pipeline
        assert pipeline.order == "ns-sh"
        model = create_model("small_cnn", num_classes=10, in_channels=1).eval()
        candidate = Compressor(model, pipeline, ModelMeta((0.5,), (0.25,), (1, 8, 8)), workdir=tmp_path).build(
            (0.0, 0.5))
        first = next(iter(model.parameters()))
        assert torch.allclose(next(iter(candidate.model.parameters())), first * 0.5)
        with pytest.raises(ConfigError, match="cannot run in that order"):
            Recipe.from_dict({"steps": ["shrink", "prune"]})
    finally:
        del METHODS["shrink"]
