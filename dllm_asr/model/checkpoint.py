"""Checkpoints in safetensors + JSON only: nothing a user hands over is ever unpickled.

A model checkpoint directory holds
    config.json          the ModelConfig (rebuilds the model; base weights referenced by name/dir)
    model.safetensors    the trained deltas only: adapter, CTC head, LoRA (and encoder/decoder if unfrozen)
A training checkpoint adds
    train_state.safetensors + train_state.json   optimiser, scheduler, RNG and data position
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from dllm_asr.files import give_normal_mode

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATE_TENSORS = "train_state.safetensors"
STATE_JSON = "train_state.json"
CHECKPOINT_FILES = frozenset({CONFIG_FILE, WEIGHTS_FILE, STATE_TENSORS, STATE_JSON})


def delta_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {name: params[name].detach().float().cpu().contiguous() for name in model.delta_parameter_names()}


def save_model(model: nn.Module, directory: str | Path, train_state: dict[str, Any] | None = None) -> Path:
    """Write config.json, the trained deltas and optionally a training state into `directory`.

    The directory is written aside and swapped in, so a kill never leaves half a checkpoint.
    """
    directory = Path(directory)
    with _written_aside(directory) as tmp:
        model.config.save(tmp / CONFIG_FILE)
        save_file(delta_state_dict(model), str(tmp / WEIGHTS_FILE))
        if train_state is not None:
            save_train_state(train_state, tmp)
    return directory


def check_weights(directory: str | Path) -> Path:
    """The checkpoint's weights file, once its header says it is whole (cheap: no tensor is read),
    so a missing or truncated file is reported before the model is built; else a ValueError naming it."""
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise ValueError(f"{directory}: not a dllm-asr checkpoint (no {WEIGHTS_FILE})")
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except Exception as err:  # safetensors raises several types for a damaged file
        raise ValueError(f"{path}: unreadable safetensors file ({err})") from None
    return path


def load_deltas(model: nn.Module, directory: str | Path) -> None:
    """Load trained deltas into `model`; every stored tensor must match a parameter exactly."""
    path = check_weights(directory)
    try:
        stored = load_file(str(path))
    except Exception as err:  # safetensors raises several types for a damaged file
        raise ValueError(f"{path}: unreadable safetensors file ({err})") from None
    params = dict(model.named_parameters())
    unknown = sorted(set(stored) - set(params))
    if unknown:
        raise ValueError(f"{path}: tensors that this model does not have: {', '.join(unknown[:5])}")
    missing = sorted(set(model.delta_parameter_names()) - set(stored))
    if missing:
        raise ValueError(f"{path}: missing trained tensors: {', '.join(missing[:5])}")
    with torch.no_grad():
        for name, tensor in stored.items():
            if params[name].shape != tensor.shape:
                raise ValueError(f"{path}: {name} has shape {tuple(tensor.shape)}, model expects {tuple(params[name].shape)}")
            params[name].copy_(tensor.to(params[name].dtype))


EXPORT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def export_model(checkpoint: str | Path, out_dir: str | Path, dtype: str = "fp16",
                 interpolate: float | None = None) -> Path:
    """Copy a checkpoint's config and deltas to `out_dir` in `dtype`, without the training state.

    For shipping: fp16 halves the file (the model casts deltas back to its own dtype on load).
    `interpolate` (Whisper-decoder models only) keeps that fraction of the fine-tuning's change,
    moving the adapted decoder back toward the pretrained one (`interpolate_toward_base`).
    """
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(EXPORT_DTYPES)}, got {dtype!r}")
    src = Path(checkpoint)
    if not (src / CONFIG_FILE).is_file() or not (src / WEIGHTS_FILE).is_file():
        raise ValueError(f"{src}: not a dllm-asr checkpoint (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    stored = load_file(str(src / WEIGHTS_FILE)) if interpolate is None else _interpolated(src, interpolate)
    cast = {name: t.to(EXPORT_DTYPES[dtype]) if t.is_floating_point() else t for name, t in stored.items()}
    out = Path(out_dir)
    with _written_aside(out) as tmp:
        shutil.copyfile(src / CONFIG_FILE, tmp / CONFIG_FILE)
        save_file(cast, str(tmp / WEIGHTS_FILE))
    return out


def check_keep(keep: float) -> None:
    """The fraction of a fine-tuning's change that `--interpolate` keeps must be in (0, 1]."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"--interpolate must be in (0, 1], got {keep}")


def _interpolated(checkpoint: Path, keep: float) -> dict[str, torch.Tensor]:
    """The checkpoint's deltas after `interpolate_toward_base(keep)` (the base model is built for it)."""
    from dllm_asr.model.loading import load_model  # loading imports this module

    check_keep(keep)  # said before the model is built
    model = load_model(checkpoint)
    if not hasattr(model, "interpolate_toward_base"):
        raise ValueError(f"{checkpoint}: --interpolate needs a model with a pretrained base decoder "
                         "(decoder kind 'whisper')")
    model.interpolate_toward_base(keep)
    return delta_state_dict(model)


def save_train_state(state: dict[str, Any], directory: str | Path) -> None:
    """Save a nested dict of tensors/numbers/strings as safetensors + a JSON skeleton."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, "", tensors)
    directory = Path(directory)
    save_file(tensors, str(directory / STATE_TENSORS))
    (directory / STATE_JSON).write_text(json.dumps(skeleton))


def load_train_state(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    tensors = load_file(str(directory / STATE_TENSORS))
    skeleton = json.loads((directory / STATE_JSON).read_text())
    return _unflatten(skeleton, tensors)


def _flatten(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(value, dict):
        return {"__dict__": [[_flatten(k, f"{key}.k{i}", tensors), _flatten(v, f"{key}.{i}", tensors)]
                             for i, (k, v) in enumerate(value.items())]}
    if isinstance(value, (list, tuple)):
        items = [_flatten(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    return value


def _unflatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__tuple__" in value:
            return tuple(_unflatten(v, tensors) for v in value["__tuple__"])
        return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in value["__dict__"]}
    if isinstance(value, list):
        return [_unflatten(v, tensors) for v in value]
    return value


@contextmanager
def _written_aside(directory: Path) -> Iterator[Path]:
    """Yield a fresh sibling folder to write into; on success it replaces `directory`.

    Only what this toolkit wrote is ever replaced: `directory` (and the `.tmp`/`.old` siblings
    used for the swap) must be absent, empty, or hold nothing but checkpoint files; anything else
    (a user's folder of models, say) is refused before a byte is written."""
    tmp = directory.with_name(directory.name + ".tmp")
    for path in (directory, tmp, directory.with_name(directory.name + ".old")):
        if not _absent_or_checkpoint(path):
            raise ValueError(f"{path} exists and holds more than a dllm-asr checkpoint; refusing to replace it "
                             "(choose a new or empty folder)")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    for path in tmp.iterdir():  # safetensors writes its files owner-only
        give_normal_mode(path)
    _replace_dir(tmp, directory)


def _absent_or_checkpoint(path: Path) -> bool:
    if not path.exists():
        return True
    return path.is_dir() and all(f.is_file() and f.name in CHECKPOINT_FILES for f in path.iterdir())


def _replace_dir(src: Path, dst: Path) -> None:
    """Swap `src` into place at `dst` so a kill never leaves a half-written checkpoint: killed
    between the two renames, the previous checkpoint waits in `<dst>.old`, where
    `recover_interrupted_swap` (called by every load) and the next save find it."""
    old = dst.with_name(dst.name + ".old")
    if dst.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def recover_interrupted_swap(directory: str | Path) -> None:
    """A checkpoint folder that a killed save left only as `<directory>.old` is put back."""
    directory = Path(directory)
    old = directory.with_name(directory.name + ".old")
    if not directory.exists() and (old / CONFIG_FILE).is_file():
        os.replace(old, directory)
