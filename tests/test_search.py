"""The target-accuracy search: strategies on a known landscape, then a real search that resumes."""


import copy
import json

import pytest
import torch

from cnnzip.data import Loader, load_digits, train_val_split
from cnnzip.errors import ConfigError
from cnnzip.finetune import Finetuner
from cnnzip.io import ModelMeta, load
from cnnzip.measure import Evaluator
from cnnzip.models import create_model
from cnnzip.search import (
    BudgetExhausted,
    Compressor,
    Pipeline,
    SearchConfig,
    Trial,
    bisect_search,
    grid_search,
    margin_search,
    margin_sweep,
    replay,
    search,
)
from cnnzip.search.plots import can_plot
from cnnzip.train import TrainConfig, fit, recalibrate_batchnorm


class Landscape:
    """A stand-in for Trials: pass/fail and size are known functions of the grid indices."""

    def __init__(self, passes, size, axes=2, max_checks=None, width=1):
        self.passes, self.size, self.max_checks = passes, size, max_checks
        self.axes = ("ns", "dc")[:axes]
        self.done = {}
        # As workers would: `width` checks at once; `rounds` counts the waits (a prefetch batch, or a lone check).
        self.width, self.ahead, self.rounds = width, {}, 0

    def _trial(self, index):
        return Trial(index, index, self.passes(*index), 0.0, True, 0, self.size(*index), 0.0)

    def check(self, index):
        if index not in self.done:
            if index in self.ahead:
                self.done[index] = self.ahead.pop(index)
            else:
                if self.max_checks is not None and len(self.done) >= self.max_checks:
                    raise BudgetExhausted("budget")
                self.rounds += 1
                self.done[index] = self._trial(index)
        return self.done[index]

    def known(self, index):
        return index in self.done or index in self.ahead

    def outcome(self, index):
        t = self.done.get(index) or self.ahead.get(index)
        return None if t is None else t.passed

    def prefetch(self, indices):
        if self.width == 1:
            return
        new = [i for i in dict.fromkeys(indices) if not self.known(i)]
        assert len(new) <= max(self.width, 400)  # the grid's one batch is the exception
        if new:
            self.rounds += 1
            self.ahead.update({i: self._trial(i) for i in new})

    def size_at(self, index):
        return self.size(*index)

    def best(self):
        passing = [t for t in self.done.values() if t.passed]
        return min(passing, key=lambda t: (t.size, t.index)) if passing else None


def monotone():
    # Feasible when i + 2j <= 24; size falls faster with j (the unstructured method) than with i.
    return Landscape(lambda i, j=0: i + 2 * j <= 24, lambda i, j=0: 10_000 - 40 * i - 100 * j)


def test_grid_margin_and_bisect_on_a_monotone_landscape():
    n = 20
    grid = grid_search(l_grid := monotone(), n)
    margin = margin_search(l_margin := monotone(), n, margin=5)
    bis = bisect_search(l_bis := monotone(), n, margin=5)
    assert grid.index == (0, 12) and grid.size == 8_800
    # The margin window [p1 - 5, p1] = [14, 19] does not reach the optimum at i = 0: the heuristic's known limit.
    assert margin.passed and margin.index == (14, 5)
    assert bis.index == margin.index  # the same answer as the heuristic it accelerates
    assert len(l_bis.done) < len(l_margin.done) < len(l_grid.done) == n * n
    # With a margin wide enough, both reach the grid's optimum.
    assert bisect_search(monotone(), n, margin=19).index == grid.index
    assert margin_search(monotone(), n, margin=19).index == grid.index


def test_bisect_guards_against_a_point_that_breaks_the_trend():
    def passes(i, j=0):
        return i + 2 * j <= 24 and (i, j) != (19, 3)  # one failing point inside the feasible region

    def size(i, j=0):
        return 10_000 - 40 * i - 100 * j

    found = bisect_search(Landscape(passes, size), 20, margin=0).index
    assert found == (19, 2)  # the true limit at i = 19 is j = 2 (19 + 4 <= 24); the blip at j = 3 is a fail
    blip = Landscape(lambda i, j=0: i <= 15 or i == 17, lambda i, j=0: -i, axes=1)
    assert bisect_search(blip, 20, margin=0).index == (17,)  # a pass above a fail is found by the guard


def test_workers_change_the_wall_time_not_the_winner():
    """Checks asked for ahead of time (as Ray workers run them) leave every decision as it was: the same winner
    and the same checks asked for, in fewer waits."""
    def blip(i, j=0):
        return i + 2 * j <= 24 and (i, j) != (19, 3)

    landscapes = [(lambda i, j=0: i + 2 * j <= 24, 2), (blip, 2), (lambda i, j=0: i <= 15 or i == 17, 1)]
    for passes, axes in landscapes:
        for run in (grid_search, lambda t, n: margin_search(t, n, 5), lambda t, n: bisect_search(t, n, 5)):
            alone = Landscape(passes, lambda i, j=0: 10_000 - 40 * i - 100 * j, axes=axes)
            found = run(alone, 20)
            for width in (2, 3, 4):
                parallel = Landscape(passes, lambda i, j=0: 10_000 - 40 * i - 100 * j, axes=axes, width=width)
                assert run(parallel, 20).index == found.index
                assert list(parallel.done) == list(alone.done)  # the same checks asked, in the same order
                assert parallel.rounds < alone.rounds


def test_budget_stops_with_the_best_so_far():
    land = monotone()
    land.max_checks = 7
    best = margin_search(land, 20, margin=5)
    assert len(land.done) == 7 and best is not None and best.passed


def test_replay_answers_other_targets_and_margins_exactly():
    n = 20
    full = grid_search(grid := monotone(), n)
    assert full.size == 8_800
    # Accuracy stands in as 1 - (i + 2j) / 100: passing at target 0.76 is i + 2j <= 24, as the landscape says.
    records = [Trial(t.index, t.index, t.passed, 1 - (t.index[0] + 2 * t.index[1]) / 100, True, 100, t.size, 1.0)
               for t in grid.done.values()]
    for strategy, run in (("margin", margin_search), ("bisect", bisect_search)):
        direct = run(land := monotone(), n, 5)
        replayed, trials = replay(strategy, records, ("ns", "dc"), n, target=0.76, margin=5)
        assert replayed.index == direct.index and list(trials.done) == list(land.done)  # same checks, same order
    # A stricter target is answered from the same records: i + 2j <= 10.
    best, _ = replay("grid", records, ("ns", "dc"), n, target=0.90)
    assert best.index == (0, 5)
    # The sweep from one margin-8 run equals eight separate runs.
    _, wide = replay("margin", records, ("ns", "dc"), n, target=0.76, margin=8)
    sweep = margin_sweep(wide.done.values(), ("ns", "dc"), n, range(9), target=0.76)
    for row in sweep:
        direct = margin_search(land := monotone(), n, row["margin"])
        assert (row["size"], row["checks"]) == (direct.size, len(land.done))
    assert sweep[0]["size"] > sweep[-1]["size"]  # a wider margin finds a smaller model on this landscape
    early = [Trial((0, 0), (0, 0), True, 0.9, False, 10, 1, 0.1)]
    with pytest.raises(ConfigError, match="full evaluations"):
        replay("grid", early, ("ns", "dc"), 1, target=0.5)


@pytest.fixture(scope="module")
def digits_model():
    ds = load_digits()
    train, val = train_val_split(ds.train, val_size=0.2, seed=0)
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=10, in_channels=1)
    fit(model, Loader(train, 64, shuffle=True, mean=ds.mean, std=ds.std), TrainConfig(epochs=6, lr=0.05),
        progress=False)
    meta = ModelMeta(ds.mean, ds.std, (1, 8, 8), ds.classes)
    return model.eval(), Evaluator(Loader(val, 500, mean=ds.mean, std=ds.std)), meta


def test_real_search_meets_the_target_and_resumes(digits_model, tmp_path):
    model, val, meta = digits_model
    cfg = SearchConfig(pipeline=Pipeline(order="ns-dc", conv_bits=5, fc_bits=5), strategy="bisect", drop=0.03,
                       step=0.2, max_ratio=0.8, margin=2)
    result = search(model, val, meta, cfg, tmp_path / "run")
    assert result.best is not None and result.best.passed and result.complete
    # The winner's file is real: it loads, its size is its length, and it meets the target on the same split.
    assert result.path.stat().st_size == result.best.size
    loaded, _ = load(result.path)
    assert val.evaluate(loaded).accuracy >= result.target
    lines = (tmp_path / "run" / "trials.jsonl").read_text().splitlines()
    kinds = [json.loads(line).get("kind", "check") for line in lines]
    assert kinds.count("check") == result.cost["checks"] and kinds.count("size") == result.cost["size_builds"]

    # Rerunning resumes: nothing is recomputed, the answer is the same.
    again = search(model, val, meta, cfg, tmp_path / "run")
    assert again.best == result.best and again.cost == result.cost
    assert len((tmp_path / "run" / "trials.jsonl").read_text().splitlines()) == len(lines)

    # A search stopped by its budget, then resumed without it, ends where the uninterrupted one did.
    cut = SearchConfig(**{**cfg.__dict__, "max_checks": 3})
    partial = search(model, val, meta, cut, tmp_path / "cut")
    assert not partial.complete and partial.cost["checks"] == 3
    resumed = search(model, val, meta, cfg, tmp_path / "cut")
    assert resumed.best.index == result.best.index and resumed.best.size == result.best.size

    with pytest.raises(ConfigError, match="other settings"):
        search(model, val, meta, SearchConfig(**{**cfg.__dict__, "step": 0.4}), tmp_path / "run")
    other = create_model("small_cnn", num_classes=10, in_channels=1)  # same settings, another model
    with pytest.raises(ConfigError, match="another model"):
        search(other, val, meta, cfg, tmp_path / "run")


def test_bisect_interrupted_anywhere_resumes_to_the_same_path(digits_model, tmp_path):
    model, val, meta = digits_model
    cfg = SearchConfig(pipeline=Pipeline(order="dc-ns", structured="l1", conv_bits=4, fc_bits=4), strategy="bisect",
                       drop=0.03, step=0.1, max_ratio=0.9, margin=3)
    whole = search(model, val, meta, cfg, tmp_path / "whole")
    assert whole.cost["size_builds"] > 0  # the size bound was used
    order = [json.loads(line)["index"] for line in (tmp_path / "whole" / "trials.jsonl").read_text().splitlines()
             if "passed" in json.loads(line)]
    for k in (2, len(order) // 2, len(order) - 1):
        cut = search(model, val, meta, SearchConfig(**{**cfg.__dict__, "max_checks": k}), tmp_path / f"cut{k}")
        assert not cut.complete
        resumed = search(model, val, meta, cfg, tmp_path / f"cut{k}")
        assert resumed.best.index == whole.best.index
        assert {c: resumed.cost[c] for c in ("checks", "images", "size_builds")} == \
            {c: whole.cost[c] for c in ("checks", "images", "size_builds")}


def test_the_winner_is_fine_tuned_stage_by_stage_with_its_zeros_held(digits_model, tmp_path):
    model, val, meta = digits_model
    ds = load_digits()
    train, _ = train_val_split(ds.train, val_size=0.2, seed=0)
    batches = Loader(train, 64, shuffle=True, mean=ds.mean, std=ds.std)
    calls = []

    def finetune(stage, m, hooks):
        calls.append((stage, [type(h).__name__ for h in hooks]))
        fit(m, batches, TrainConfig(epochs=1, lr=0.01), hooks=hooks, progress=False)

    pipeline = Pipeline(order="ns-dc", structured="l1", conv_bits=4, fc_bits=4)
    compressor = Compressor(model, pipeline, meta)
    plain = compressor.build((0.2, 0.5), keep_file=tmp_path / "plain.cnnz")
    tuned = compressor.build((0.2, 0.5), keep_file=tmp_path / "tuned.cnnz", finetune=finetune)
    assert calls == [("structured", []), ("final", ["MaskHook"]), ("shared", ["SharedWeightsHook"])]
    # Fine-tuning recovers what a 20% channel cut costs this tiny model (70.8% -> above 90%)...
    assert val.evaluate(plain.model).accuracy < 0.8 < 0.9 < val.evaluate(load(tuned.path)[0]).accuracy
    # ...and the magnitude-pruned zeros survived both fine-tunes: as sparse as the untuned candidate.
    def zeros(m):
        return sum(int((p == 0).sum()) for n, p in m.named_parameters() if p.dim() > 1)
    assert zeros(load(tuned.path)[0]) == zeros(plain.model) > 0

    # In a search, the trials are never fine-tuned; only the winner is, and its file is evaluated as written.
    calls.clear()
    cfg = SearchConfig(pipeline=Pipeline(order="dc", conv_bits=4, fc_bits=4), strategy="bisect", drop=0.01,
                       step=0.2, max_ratio=0.8)
    untuned = search(model, val, meta, cfg, tmp_path / "a")
    result = search(model, val, meta, cfg, tmp_path / "b", finetune=finetune)
    assert [(t.index, t.accuracy) for t in result.trials] == [(t.index, t.accuracy) for t in untuned.trials]
    assert [c[0] for c in calls] == ["final", "shared"] and result.finetuned and not untuned.finetuned
    assert result.final_accuracy == val.evaluate(load(result.path)[0]).accuracy
    assert result.final_size == result.path.stat().st_size


def test_grid_finds_the_smallest_passing_point(digits_model, tmp_path):
    model, val, meta = digits_model
    cfg = SearchConfig(pipeline=Pipeline(order="dc-ns", conv_bits=4, fc_bits=4), strategy="grid", drop=0.05,
                       step=0.3, max_ratio=0.6)
    result = search(model, val, meta, cfg, tmp_path)
    assert result.cost["checks"] == 9
    passing = [t for t in result.trials if t.accuracy >= result.target]
    assert result.best.size == min(t.size for t in passing)

    # The margin heuristic on the same grid: its sweep over margins 0..2 comes with it, replayed from its trials.
    margin = search(model, val, meta, SearchConfig(**{**cfg.__dict__, "strategy": "margin", "margin": 2}),
                    tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "result.json").read_text())["margin_sweep"]
    assert [r["margin"] for r in saved] == [0, 1, 2] and saved[-1]["size"] == margin.best.size
    assert saved[-1]["checks"] == margin.cost["checks"] and margin.best.size >= result.best.size
    if can_plot():
        assert (tmp_path / "m" / "trajectory.png").stat().st_size > 0
        assert (tmp_path / "m" / "margin_sweep.png").stat().st_size > 0


def test_a_target_above_the_baseline_is_refused(digits_model, tmp_path):
    model, val, meta = digits_model
    with pytest.raises(ConfigError, match="above the model's own"):
        search(model, val, meta, SearchConfig(target=1.0), tmp_path)
    with pytest.raises(ConfigError):
        SearchConfig(target=0.9, drop=0.01)


def test_recalibrated_candidates_carry_statistics_of_the_training_images(digits_model, tmp_path):
    model, val, meta = digits_model
    ds = load_digits()
    train, _ = train_val_split(ds.train, val_size=0.2, seed=0)
    calibration = [x.numpy() for x, _ in Loader(train.subset(range(256)), 32, mean=ds.mean, std=ds.std)]
    with pytest.raises(ConfigError, match="batches of training images"):
        Compressor(model, Pipeline(order="ns-dc", recalibrate=256), meta)
    with pytest.raises(ConfigError, match="calibration batches"):
        Compressor(model, Pipeline(order="ns", quantize="int8"), meta, recalibration=calibration)
    with pytest.raises(ConfigError, match="training images"):
        Pipeline(recalibrate=-1)
    plain = Compressor(model, Pipeline(order="ns-dc", structured="l1", conv_bits=4, fc_bits=4), meta)
    recal = Compressor(model, Pipeline(order="ns-dc", structured="l1", conv_bits=4, fc_bits=4, recalibrate=256),
                       meta, calibration=calibration)
    a, b = plain.build((0.3, 0.5)), recal.build((0.3, 0.5))
    expected = copy.deepcopy(a.model)
    recalibrate_batchnorm(expected, [torch.from_numpy(x) for x in calibration], 256)
    assert all(torch.equal(p, q) for p, q in zip(expected.state_dict().values(), b.model.state_dict().values(),
                                                     strict=True))
    assert val.evaluate(b.model).accuracy > val.evaluate(a.model).accuracy
    same = Compressor(model, Pipeline(order="ns", recalibrate=256), meta, calibration=calibration).build((0.0,))
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), same.model.state_dict().values(),
                                                     strict=True))
    cfg = SearchConfig(pipeline=Pipeline(order="ns", structured="l1", recalibrate=256), strategy="bisect",
                       drop=0.03, step=0.2, max_ratio=0.8)
    result = search(model, val, meta, cfg, tmp_path / "run", recalibration=calibration)
    records = [json.loads(line) for line in (tmp_path / "run" / "trials.jsonl").read_text().splitlines()]
    assert records and all(r["recalibrate"] == 256 for r in records)  # never replayed as raw trials
    # Nor as trials recalibrated on other images: the same search on other batches checks afresh.
    other = [x[::-1].copy() for x in calibration]
    again = search(model, val, meta, cfg, tmp_path / "run", recalibration=other)
    assert len({r["recalibration_images"] for r in (json.loads(line) for line in
                (tmp_path / "run" / "trials.jsonl").read_text().splitlines())}) == 2
    assert again.cost["checks"] == result.cost["checks"]
    loaded, _ = load(result.path)
    assert val.evaluate(loaded).accuracy == result.best.accuracy  # the file holds the recalibrated statistics


def test_pca_widths_are_a_structured_knob_of_the_search(digits_model, tmp_path):
    from cnnzip.prune.pca import PcaPruning, pca_plan
    from cnnzip.search.candidates import pca_variance

    model, val, meta = digits_model
    ds = load_digits()
    train, _ = train_val_split(ds.train, val_size=0.2, seed=0)
    images = [x for x, _ in Loader(train.subset(range(512)), 64, mean=ds.mean, std=ds.std)]
    with pytest.raises(ConfigError, match="PCA widths need"):
        Compressor(model, Pipeline(order="ns", structured="pca"), meta)
    with pytest.raises(ConfigError, match="structured"):
        Pipeline(structured="nope")
    assert [round(pca_variance(r), 4) for r in (0.0, 0.1, 0.2, 0.5)] == [1.0, 0.999, 0.992, 0.875]
    compressor = Compressor(model, Pipeline(order="ns", structured="pca"), meta, recalibration=images)
    widths = []
    for ratio in (0.2, 0.4, 0.6):
        plan = pca_plan(model, PcaPruning(variance=pca_variance(ratio), images=512), images,
                        torch.zeros(1, *meta.input_shape))
        built = dict(compressor.build((ratio,)).model.named_modules())
        assert {name: built[name].out_channels for name in plan.widths} == plan.widths
        widths.append(sum(plan.widths.values()))
    assert widths[0] > widths[1] > widths[2]  # a larger ratio keeps less variance: fewer channels
    cfg = SearchConfig(pipeline=Pipeline(order="ns", structured="pca", recalibrate=256), strategy="bisect",
                       drop=0.05, step=0.1, max_ratio=0.8)
    result = search(model, val, meta, cfg, tmp_path / "run", recalibration=images)
    assert result.best.accuracy >= result.target and result.best.ratios[0] > 0, result
    records = [json.loads(line) for line in (tmp_path / "run" / "trials.jsonl").read_text().splitlines()]
    assert records and all("pca_images" in r for r in records if "ratios" in r)


def test_recovery_aware_trials_judge_each_candidate_after_a_short_fine_tune(digits_model, tmp_path):
    """With recovery, every candidate is fine-tuned (stage "final", its zeros held) before its check; the records
    say how, and how long it took; a killed search resumes with the same trials; the winner is the recovered
    candidate."""
    model, val, meta = digits_model
    ds = load_digits()
    train, _ = train_val_split(ds.train, val_size=0.2, seed=0)
    batches = Loader(train.subset(range(300)), 64, shuffle=True, mean=ds.mean, std=ds.std)
    calls = []
    recovery = Finetuner(batches, {"final": 1}, TrainConfig(lr=0.01), run_dir=tmp_path / "ckpt",
                         on_start=lambda stage, m: calls.append(stage))

    cfg = SearchConfig(pipeline=Pipeline(order="ns-dc", structured="l1", conv_bits=4, fc_bits=4), strategy="grid",
                       drop=0.02, step=0.3, max_ratio=0.6, recovery_images=300)
    with pytest.raises(ConfigError, match="recovery"):
        search(model, val, meta, cfg, tmp_path / "x")  # the config says recovery, no recovery given
    with pytest.raises(ConfigError, match="recovery_images"):
        SearchConfig(drop=0.01, recovery_distill=True)
    # The unpruned candidate is recovered on a copy: the model every candidate starts from stays as it was.
    compressor = Compressor(model, cfg.pipeline, meta)
    before = copy.deepcopy(compressor.model.state_dict())
    compressor.build((0.0, 0.0), finetune=recovery)
    assert all(torch.equal(before[k], v) for k, v in compressor.model.state_dict().items())
    calls.clear()
    raw = search(model, val, meta, SearchConfig(**{**cfg.__dict__, "recovery_images": 0}), tmp_path / "raw")
    result = search(model, val, meta, cfg, tmp_path / "run", recovery=recovery)
    assert calls and set(calls) == {"final"}  # one pass per candidate built (of 9), with its zeros held
    records = [json.loads(line) for line in (tmp_path / "run" / "trials.jsonl").read_text().splitlines()]
    assert records and all(r["recovery"]["images"] == 300 and r["recovery"]["epochs"] == {"final": 1}
                           for r in records)
    assert all(t.recovery_seconds > 0 for t in result.trials if any(t.ratios))
    assert 0 < result.cost["recovery_seconds"] < result.cost["seconds"]
    # Recovery lifts the pruned candidates: the mean accuracy over the same grid is higher.
    mean = lambda r: sum(t.accuracy for t in r.trials) / len(r.trials)  # noqa: E731
    assert mean(result) > mean(raw)
    # The winner's file is the recovered candidate, as its trial judged it.
    assert val.evaluate(load(result.path)[0]).accuracy == result.best.accuracy
    # Resumed: every check replayed, nothing trained again.
    calls.clear()
    again = search(model, val, meta, cfg, tmp_path / "run", recovery=recovery)
    assert [(t.index, t.accuracy) for t in again.trials] == [(t.index, t.accuracy) for t in result.trials]
    assert again.best == result.best
    assert calls == ["final"]  # only the winner's file is rebuilt, its recovery read from its checkpoint


def test_a_search_on_two_ray_workers_records_every_trial_once_and_finds_the_same_winner(tmp_path, digits_model):
    pytest.importorskip("ray")
    model, val, meta = digits_model
    for strategy in ("grid", "margin"):
        cfg = SearchConfig(pipeline=Pipeline(order="ns-dc", conv_bits=5, fc_bits=5), strategy=strategy, drop=0.03,
                           step=0.25, max_ratio=0.75, margin=1)
        one = search(model, val, meta, cfg, tmp_path / f"{strategy}1")
        two = search(model, val, meta, cfg, tmp_path / f"{strategy}2", workers=2)
        lines = [json.loads(x) for x in (tmp_path / f"{strategy}2" / "trials.jsonl").read_text().splitlines()]
        indices = [tuple(x["index"]) for x in lines if x.get("kind") != "size"]
        assert len(indices) == len(set(indices))  # each trial recorded once
        assert two.best == one.best is not None or two.best.index == one.best.index
        assert {t.index: t.accuracy for t in one.trials} == {t.index: t.accuracy for t in two.trials
                                                              if t.index in {u.index for u in one.trials}}
        if strategy == "grid":
            assert len(indices) == 16  # the whole 4 x 4 grid, at once
        assert two.cost["checks"] >= one.cost["checks"]  # speculative checks are counted, not hidden


def test_budgets_with_workers_stop_where_a_search_alone_stops(tmp_path):
    """Checks computed ahead do not count against --max-checks until the strategy asks for them, so a budgeted
    search with workers stops at the same winner as one without (the real Trials, a stand-in pool)."""
    from types import SimpleNamespace

    from cnnzip.search.candidates import Candidate
    from cnnzip.search.strategies import bisect_search
    from cnnzip.search.trials import Trials
    from cnnzip.search.workers import run_check

    class Compressor:
        pipeline = Pipeline(order="ns-dc")

        def build(self, ratios, finetune=None):
            i, j = (round(r * 20) for r in ratios)
            return Candidate(ratios, (i, j), 10_000 - 40 * i - 100 * j)

    class Evaluator:
        def evaluate(self, model):
            i, j = model
            return SimpleNamespace(accuracy=1 - (i + 2 * j) / 100, complete=True, evaluated=1, passed=None)

    class Pool:  # computes each batch at once, as workers would
        def __init__(self, trials):
            self.trials = trials

        def run(self, items, done, stop=None):
            for index, ratios in items:
                if stop is not None and stop():
                    return
                done(run_check(self.trials.job, index, ratios))

    grid = [k * 0.05 for k in range(20)]
    for budget in (8, 12, 16, None):
        found = []
        for width in (1, 4):
            trials = Trials(Compressor(), Evaluator(), 0.76, grid, tmp_path / f"{budget}-{width}.jsonl",
                            strategy="bisect", early_exit=False, max_checks=budget)
            if width > 1:
                trials.width, trials.pool = width, Pool(trials)
            best = bisect_search(trials, 20, 5)
            found.append((best.index, list(trials.asked)))
            if width > 1:
                assert trials.cost()["checks"] >= len(trials.asked)  # speculative checks are counted in the cost
        assert found[0] == found[1], budget
