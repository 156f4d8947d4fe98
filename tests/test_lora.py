import pytest
import torch
from torch import nn

from dllm_asr.config import LoraAdapterConfig
from dllm_asr.model.lora import apply_lora, count_target_matches


class Block(nn.Module):
    """LLaDA-style (OLMo) names: q_proj/k_proj/v_proj/attn_out/ff_proj/up_proj/ff_out."""

    def __init__(self, width: int = 8):
        super().__init__()
        for name in ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"):
            setattr(self, name, nn.Linear(width, width, bias=False))


class TinyLLaDA(nn.Module):
    def __init__(self, layers: int = 3):
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(layers))


def test_qkv_targets_adapt_three_per_layer():
    model = TinyLLaDA()
    assert apply_lora(model, LoraAdapterConfig(), num_layers=3) == 9
    names = [name for name, _ in model.named_parameters() if "lora_" in name]
    assert len(names) == 18  # A and B per module
    # LoRA B starts at zero: the adapted model equals the base model.
    x = torch.randn(2, 8)
    block = model.blocks[0]
    assert torch.allclose(block.q_proj(x), block.q_proj.base_layer(x))


def test_llama_style_targets_fail_loudly_on_llada_names():
    model = TinyLLaDA()
    settings = LoraAdapterConfig(targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"))
    assert count_target_matches(model, settings.targets)["o_proj"] == 0
    with pytest.raises(ValueError, match="o_proj: 0"):
        apply_lora(model, settings, num_layers=3)


def test_scaling_is_alpha_over_rank():
    model = TinyLLaDA(layers=1)
    apply_lora(model, LoraAdapterConfig(rank=8, alpha=32), num_layers=1)
    assert model.blocks[0].q_proj.scaling["default"] == pytest.approx(4.0)
