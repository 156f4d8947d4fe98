import pytest
import torch

from dllm_asr.config import AdapterConfig
from dllm_asr.model.adapters import ConvProjector, WindowQFormer, build_adapter


def make_qformer(**overrides) -> WindowQFormer:
    config = AdapterConfig(hidden_size=32, num_heads=4, dropout=0.0, **overrides)
    return WindowQFormer(config, frame_dim=24, llm_dim=40).eval()


def test_qformer_shapes_match_paper_for_30_seconds():
    qformer = make_qformer(partial_window="drop")
    frames = torch.randn(1, 1500, 24)
    out, lengths = qformer(frames, torch.tensor([1500]))
    # 1500 frames / 17 -> 88 windows x 4 queries = 352 embeddings (docs/algorithms.md sec. 1).
    assert out.shape == (1, 352, 40)
    assert lengths.tolist() == [352]


def test_qformer_pads_partial_window_by_default():
    qformer = make_qformer()
    out, lengths = qformer(torch.randn(2, 40, 24), torch.tensor([40, 17]))
    assert lengths.tolist() == [12, 4]  # ceil(40/17)=3 windows, 1 window
    assert out.shape == (2, 12, 40)


def test_qformer_row_independent_of_batch_padding():
    torch.manual_seed(0)
    qformer = make_qformer()
    alone = torch.randn(1, 30, 24)
    out_alone, _ = qformer(alone, torch.tensor([30]))
    batch = torch.randn(3, 80, 24)
    batch[1, :30] = alone[0]
    out_batch, lengths = qformer(batch, torch.tensor([80, 30, 51]))
    n = int(lengths[1])
    torch.testing.assert_close(out_batch[1, :n], out_alone[0, :n], atol=1e-5, rtol=1e-5)


def test_qformer_window_sees_only_its_frames():
    torch.manual_seed(0)
    qformer = make_qformer()
    frames = torch.randn(1, 34, 24)
    out, _ = qformer(frames, torch.tensor([34]))
    changed = frames.clone()
    changed[0, 20] += 5.0  # second window
    out2, _ = qformer(changed, torch.tensor([34]))
    torch.testing.assert_close(out[0, :4], out2[0, :4])
    assert not torch.allclose(out[0, 4:8], out2[0, 4:8])


def test_conv_projector_halves_and_is_batch_invariant():
    torch.manual_seed(0)
    proj = ConvProjector(AdapterConfig(kind="conv"), frame_dim=8, llm_dim=16)
    alone = torch.randn(1, 7, 8)
    out_alone, len_alone = proj(alone, torch.tensor([7]))
    assert out_alone.shape == (1, 4, 16) and len_alone.tolist() == [4]
    batch = torch.randn(2, 12, 8)
    batch[0, :7] = alone[0]
    out_batch, lengths = proj(batch, torch.tensor([7, 12]))
    assert lengths.tolist() == [4, 6]
    torch.testing.assert_close(out_batch[0, :4], out_alone[0], atol=1e-6, rtol=1e-6)


def test_unknown_adapter_kind_is_named():
    with pytest.raises(ValueError, match="adapter.kind"):
        build_adapter(AdapterConfig(kind="mlp"), 8, 8)
