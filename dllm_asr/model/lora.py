"""LoRA on the decoder through peft, with a loud check of how many modules were adapted.

With LLaDA's OLMo-style names a LLaMA-style target list (q_proj, k_proj, v_proj, o_proj,
gate_proj, ...) silently matches fewer modules than intended; here every target suffix must
match exactly one module per decoder layer or `apply_lora` raises.
"""

from __future__ import annotations

from collections import Counter

from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from dllm_asr.config import LoraAdapterConfig


def count_target_matches(model: nn.Module, targets: tuple[str, ...]) -> Counter:
    """How many nn.Linear modules of `model` each target suffix matches."""
    counts: Counter = Counter({target: 0 for target in targets})
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            for target in targets:
                if name == target or name.endswith("." + target):
                    counts[target] += 1
    return counts


def apply_lora(model: nn.Module, settings: LoraAdapterConfig, num_layers: int) -> int:
    """Inject LoRA adapters into `model` in place; returns the number of adapted modules.

    Raises ValueError naming the targets that do not match exactly `num_layers` modules.
    """
    counts = count_target_matches(model, settings.targets)
    wrong = {target: n for target, n in counts.items() if n != num_layers}
    if wrong:
        found = ", ".join(f"{t}: {n}" for t, n in wrong.items())
        raise ValueError(
            f"lora.targets: expected each target to match {num_layers} modules (one per layer), got {found}"
        )
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.targets),
        bias="none",
    )
    inject_adapter_in_model(config, model)
    adapted = sum(isinstance(module, LoraLayer) for module in model.modules())
    expected = num_layers * len(settings.targets)
    if adapted != expected:
        raise ValueError(f"lora: adapted {adapted} modules, expected {expected}")
    return adapted
