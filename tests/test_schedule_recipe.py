import pytest
import torch

from dllm_asr.model.checkpoint import load_train_state, save_train_state
from dllm_asr.training.recipe import apply_overrides, load_train_config, train_config_from_dict
from dllm_asr.training.schedule import LRSchedule, Stage, StagePlan, learning_rate


def test_warmup_then_cosine_hand_worked():
    s = LRSchedule(lr=3e-5, warmup_start_lr=1e-6, min_lr=1e-5, warmup_steps=10)
    assert learning_rate(s, 0, 111) == pytest.approx(1e-6)
    assert learning_rate(s, 5, 111) == pytest.approx(1e-6 + 0.5 * (3e-5 - 1e-6))
    assert learning_rate(s, 10, 111) == pytest.approx(3e-5)
    # half way through the 100-step decay: cos(pi/2) = 0 -> midpoint of lr and min_lr
    assert learning_rate(s, 60, 111) == pytest.approx(2e-5)
    assert learning_rate(s, 110, 111) == pytest.approx(1e-5)


def test_stage_plan_locates_steps():
    plan = StagePlan([Stage("a", 3, ("adapter",)), Stage("b", 2, ("adapter", "lora"))])
    assert plan.total_steps == 5
    assert [plan.locate(i) for i in range(5)] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]


def test_unknown_trainable_part_is_named():
    with pytest.raises(ValueError, match="embeddings"):
        Stage("x", 1, ("embeddings",))


def test_recipe_overrides_and_errors(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  adapter:\n    kind: conv\ndata:\n  train: t.jsonl\nstages:\n  - {name: s1, steps: 4, train: [adapter]}\n")
    cfg = load_train_config(recipe, ["schedule.lr=1e-4", "data.max_batch_size=3", "model.lora.rank=4"])
    assert cfg.schedule.lr == 1e-4 and cfg.data.max_batch_size == 3 and cfg.model.lora.rank == 4
    assert cfg.model.adapter.kind == "conv" and cfg.stages[0].train == ("adapter",)
    with pytest.raises(ValueError, match="r.yaml.*unknown recipe key"):
        load_train_config(recipe, ["learning_rate=3"])
    with pytest.raises(ValueError, match="AdapterConfig option"):
        train_config_from_dict({"model": {"adapter": {"windw": 3}}})
    with pytest.raises(ValueError, match="key.subkey=value"):
        apply_overrides({}, ["nonsense"])


def test_an_ar_model_is_dev_evaluated_autoregressively():
    shared_eval = {"eval": {"strategy": "diffusion", "steps": 16}}
    assert train_config_from_dict(shared_eval).eval_options().strategy == "diffusion"
    ar = train_config_from_dict({**shared_eval, "model": {"objective": "ar"}}).eval_options()
    assert ar.strategy == "ar" and ar.steps == 16


def test_overrides_index_lists_such_as_stages():
    data = {"stages": [{"name": "a", "steps": 10}, {"name": "b", "steps": 20}], "schedule": {"lr": 1}}
    apply_overrides(data, ["stages.1.steps=250", "stages.0.train=[adapter]"])
    assert data["stages"] == [{"name": "a", "steps": 10, "train": ["adapter"]}, {"name": "b", "steps": 250}]
    with pytest.raises(ValueError, match="'2' is not an index of a 2-item list"):
        apply_overrides(data, ["stages.2.steps=1"])
    with pytest.raises(ValueError, match="'x' is not an index"):
        apply_overrides(data, ["stages.x.steps=1"])
    with pytest.raises(ValueError, match="lr is not a section"):
        apply_overrides(data, ["schedule.lr.x=1"])


def test_train_state_round_trip_without_pickle(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "step": 7, "rng": torch.get_rng_state(), "pair": (1, "x")}
    save_train_state(state, tmp_path)
    back = load_train_state(tmp_path)
    assert back["step"] == 7 and back["pair"] == (1, "x")
    assert torch.equal(back["rng"], state["rng"])
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.5)
    opt2.load_state_dict(back["optimizer"])
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(opt2.state_dict()["state"][0][key], opt.state_dict()["state"][0][key])
    assert opt2.param_groups[0]["lr"] == 0.1


@pytest.mark.parametrize("override, message", [
    ("eval.stpes=3", r"unknown eval option\(s\): eval.stpes; allowed: .*steps"),
    ("eval.steps=-3", "eval.steps must be >= 1"),
    ("eval.threshold=1.5", r"eval.threshold must be in \(0, 1\]"),
    ("data.max_batch_size=0", "data.max_batch_size must be >= 1"),
    ("data.max_batch_size=2.5", "data.max_batch_size must be int"),
    ("data.dev=5", "data.dev must be str or null"),
    ("schedule.lr=abc", "schedule.lr must be float"),
    ("schedule.lr=-1e-4", "schedule.lr must be >= 0"),
    ("stages.0.steps=x", "steps must be an integer >= 1"),
    ("grad_accum=0", "grad_accum must be >= 1"),
    ("save_every=0", "save_every must be >= 1"),
    ("data.on_error=ignore", "data.on_error must be skip or stop"),
    ("model.decoding.stepz=3", r"unknown model.decoding option\(s\): stepz"),
    ("model.decoding.threshold=2", r"--threshold must be in \(0, 1\]"),
    ("model.window_seconds=0", "model.window_seconds must be > 0"),
    ("pad_to_seconds=-1", "pad_to_seconds must be >= 0"),
    ("response_blocks=clip", "response_blocks must be longest or duration"),
])
def test_every_shipped_recipe_loads_and_bad_values_are_named_at_load(override, message):
    from dllm_asr.cli import shipped_recipes

    for name in shipped_recipes():
        load_train_config(name)
    with pytest.raises(ValueError, match=message):
        load_train_config("tiny-en", [override])
