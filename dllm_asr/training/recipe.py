"""Training recipes: a YAML file mapped onto `TrainConfig`, with `key.sub=value` overrides.

    model:    ModelConfig fields (encoder, adapter, decoder, lora, prompt, objective, ...)
    data:     DataConfig fields
    stages:   list of {name, steps, train: [adapter, ctc_head, lora, encoder]}
    schedule: LRSchedule fields
    eval:     TranscribeOptions fields for the dev WER
    (any other top-level key: a TrainConfig field)
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from dllm_asr.config import ModelConfig, build_dataclass
from dllm_asr.paths import package_file
from dllm_asr.training.schedule import LRSchedule, Stage


class RecipeLoader(yaml.SafeLoader):
    """YAML 1.1 reads "3e-5" as a string; learning rates are written that way, so read it as a float."""


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml(text: str):
    return yaml.load(text, Loader=RecipeLoader)


@dataclass
class DataConfig:
    train: str = ""
    """Training data: JSONL manifest, LibriSpeech folder or Kaldi data dir."""
    dev: str | None = None
    """Dev data for WER during training (best checkpoint by dev WER)."""
    dev_max_utterances: int | None = 200
    max_batch_size: int = 8
    max_batch_seconds: float = 120.0
    """Padded seconds of audio per micro-batch."""
    augment: dict[str, Any] = field(default_factory=dict)
    """AugmentConfig fields (speed_factors, noise_prob, reverb_prob, ...); empty = no augmentation."""
    on_error: str = "skip"
    """A bad clip or transcript: "skip" it with a warning, or "stop"."""
    num_workers: int = 0

    def __post_init__(self) -> None:
        for key in ("max_batch_size", "dev_max_utterances"):
            if isinstance(getattr(self, key), int) and getattr(self, key) < 1:
                raise ValueError(f"data.{key} must be >= 1, got {getattr(self, key)}")
        if isinstance(self.max_batch_seconds, (int, float)) and self.max_batch_seconds <= 0:
            raise ValueError(f"data.max_batch_seconds must be > 0, got {self.max_batch_seconds}")
        if self.on_error not in ("skip", "stop"):
            raise ValueError(f"data.on_error must be skip or stop, got {self.on_error!r}")


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    stages: list[Stage] = field(default_factory=lambda: [Stage()])
    schedule: LRSchedule = field(default_factory=LRSchedule)
    eval: dict[str, Any] = field(default_factory=lambda: {"strategy": "diffusion", "steps": 8})
    output_dir: str = "runs/experiment"
    init_from: str | None = None
    """A checkpoint whose trained deltas initialise this run (e.g. stage 2 from stage 1)."""
    weight_decay: float = 0.05
    grad_accum: int = 1
    grad_clip: float = 1.0
    precision: str = "fp32"
    """"fp32", "bf16" (autocast; frozen base weights stored in bf16) or "fp16"."""
    loss_weighting: str = "llada"
    """"llada" (1/p_mask, per answer length) or "none" (Whisper-LLaDA code: plain mean)."""
    mask_eps: float = 1e-3
    full_mask_fraction: float = 0.2
    ctc_weight: float = 0.3
    log_every: int = 10
    save_every: int = 200
    seed: int = 0
    device: str = "auto"
    cache_encoder_gb: float = 0.0
    """Keep the frozen encoder's outputs of training clips in memory (fp16), up to this many GiB,
    and reuse them in later epochs (0 = off). Pays off when epochs repeat clips unaugmented."""
    pad_to_seconds: float = 0.0
    """Encode training clips shorter than this with zero feature frames appended up to it, as
    `TranscribeOptions.pad_to_seconds` does at inference (0 = off): a model decoded with padding
    then learns on the encoder output it is decoded with."""
    response_blocks: str = "longest"
    """How long each training response block is: "longest" pads a micro-batch's transcripts with
    EOS to its longest + 1 (rounded up to 8); "duration" sizes each row's block from its clip's
    duration as decoding does (`transcription.strategies.block_lengths`, or the transcript + 1
    where that is longer), so the model learns on as much EOS padding as it is decoded with."""
    attention_anneal_steps: int = 0
    """Attention-mask annealing (DiffuLLaMA) for decoders that support it (kind "whisper"): the
    response attention goes from causal to bidirectional linearly over this many steps (0 = off)."""
    stop_after_steps: int | None = None
    """Stop early at this global step (checkpoints as usual); for tests and time-boxed runs."""
    stop_after_minutes: float | None = None
    """Checkpoint and stop once this much wall time has passed; run again to resume. For jobs
    with a time limit (a cluster queue, a lent GPU's 10-minute commands)."""

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]

    @property
    def base_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.precision == "bf16" else torch.float32

    def eval_options(self):
        """Decoding options of the dev WER; a causal (objective "ar") model is always decoded
        autoregressively, whatever `eval.strategy` says (the recipes share one eval section)."""
        from dllm_asr.transcription.options import TranscribeOptions

        allowed = {f.name for f in dataclasses.fields(TranscribeOptions)}
        unknown = sorted(set(self.eval) - allowed)
        if unknown:
            raise ValueError(f"unknown eval option(s): {', '.join('eval.' + k for k in unknown)}; "
                             f"allowed: {', '.join(sorted(allowed))}")
        try:
            options = TranscribeOptions(**self.eval)
        except (TypeError, ValueError) as err:  # its messages name CLI flags: name the recipe keys
            raise ValueError(re.sub(r"--([a-z-]+)", lambda m: "eval." + m.group(1).replace("-", "_"), str(err))) from None
        return replace(options, strategy="ar") if self.model.objective == "ar" else options

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")
        for key in ("grad_accum", "log_every", "save_every"):
            if isinstance(getattr(self, key), int) and getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.loss_weighting not in ("llada", "none"):
            raise ValueError(f"loss_weighting must be llada or none, got {self.loss_weighting!r}")
        if self.response_blocks not in ("longest", "duration"):
            raise ValueError(f"response_blocks must be longest or duration, got {self.response_blocks!r}")
        if not self.pad_to_seconds >= 0:
            raise ValueError(f"pad_to_seconds must be >= 0 seconds, got {self.pad_to_seconds}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """"a.b=3" -> (["a", "b"], 3); the value is parsed as YAML (numbers, lists, booleans)."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like key.subkey=value")
    key, value = text.split("=", 1)
    return key.strip().split("."), read_yaml(value)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each "a.b=value" in `data`; a number indexes a list, as in "stages.0.steps=250"."""
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for key in keys[:-1]:
            node = _child(node, key, text)
        if isinstance(node, list):
            node[_list_index(node, keys[-1], text)] = value
        else:
            node[keys[-1]] = value
    return data


def _child(node: Any, key: str, text: str) -> Any:
    if isinstance(node, list):
        child = node[_list_index(node, key, text)]
    else:
        child = node.setdefault(key, {})
    if not isinstance(child, (dict, list)):
        raise ValueError(f"override {text!r}: {key} is not a section")
    return child


def _list_index(node: list, key: str, text: str) -> int:
    if not key.isdigit() or int(key) >= len(node):
        raise ValueError(f"override {text!r}: {key!r} is not an index of a {len(node)}-item list")
    return int(key)


def train_config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Build and validate a TrainConfig: unknown keys, wrong types and impossible values are
    refused with the key's name (e.g. "eval.stpes", "data.max_batch_size") before any work."""
    data = dict(data)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown recipe key(s): {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
    model = ModelConfig.from_dict(data.pop("model", {}))
    data_settings = check_types(build_dataclass(DataConfig, data.pop("data", {}) or {}), "data")
    stages = [check_types(build_dataclass(Stage, s), f"stages.{i}") for i, s in enumerate(data.pop("stages", [{}]))]
    schedule = check_types(build_dataclass(LRSchedule, data.pop("schedule", {}) or {}), "schedule")
    config = check_types(TrainConfig(model=model, data=data_settings, stages=stages, schedule=schedule, **data), "")
    config.eval_options()  # the dev decoding options: unknown or impossible ones fail here, not at step 150
    return config


def check_types(section: Any, name: str) -> Any:
    """Each field of the dataclass `section` holds a value of its annotated type (an int where a
    float is expected is fine); otherwise a ValueError naming `name.field`. Returns `section`."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        value, expected = getattr(section, f.name), hints[f.name]
        if not _is_instance(value, expected):
            key = f"{name}.{f.name}" if name else f.name
            raise ValueError(f"{key} must be {_type_name(expected)}, got {value!r}")
    return section


def _is_instance(value: Any, expected: Any) -> bool:
    origin = typing.get_origin(expected)
    if expected is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_is_instance(value, option) for option in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or expected)


def _type_name(expected: Any) -> str:
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(option) for option in typing.get_args(expected))
    if expected is type(None):
        return "null"
    return getattr(typing.get_origin(expected) or expected, "__name__", str(expected))


RECIPES_DIR = package_file("recipes")


def resolve_recipe(path_or_name: str | Path) -> Path:
    """A recipe file: an existing path, else the name of a recipe shipped in dllm_asr/recipes/."""
    path = Path(path_or_name)
    shipped = RECIPES_DIR / f"{path_or_name}.yaml"
    return shipped if not path.exists() and shipped.is_file() else path


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a recipe YAML (a path or a shipped recipe's name), apply overrides, and validate it;
    errors name the file."""
    path = resolve_recipe(path)
    try:
        data = read_yaml(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: cannot read recipe ({err})") from None
    try:
        return train_config_from_dict(apply_overrides(data, overrides or []))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from None
