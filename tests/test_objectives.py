import math

import pytest
import torch
from torch.nn import functional as F

from dllm_asr.training.objectives import MaskedBatch, forward_mask, masked_diffusion_loss, next_token_loss

MASK = 99


def test_forward_mask_never_touches_invalid_positions_and_uses_mask_id():
    gen = torch.Generator().manual_seed(0)
    response = torch.arange(40).reshape(4, 10)
    valid = torch.ones(4, 10, dtype=torch.bool)
    valid[:, 7:] = False
    batch = forward_mask(response, valid, MASK, generator=gen)
    assert not batch.masked[:, 7:].any()
    assert (batch.noisy[batch.masked] == MASK).all()
    assert (batch.noisy[~batch.masked] == response[~batch.masked]).all()
    assert ((batch.p_mask > 1e-3 - 1e-9) & (batch.p_mask <= 1.0)).all()


def test_forward_mask_rate_follows_p_mask():
    gen = torch.Generator().manual_seed(1)
    response = torch.zeros(2000, 64, dtype=torch.long)
    batch = forward_mask(response, torch.ones_like(response, dtype=torch.bool), MASK, generator=gen)
    observed = batch.masked.float().mean(dim=1)
    assert (observed - batch.p_mask).abs().mean() < 0.05
    # t ~ U(0,1] -> mean masking rate ~ 0.5
    assert abs(float(batch.masked.float().mean()) - 0.5) < 0.03


def test_full_mask_fraction_masks_whole_rows():
    gen = torch.Generator().manual_seed(2)
    response = torch.zeros(1000, 8, dtype=torch.long)
    batch = forward_mask(response, torch.ones_like(response, dtype=torch.bool), MASK,
                         full_mask_fraction=0.2, generator=gen)
    full_rows = batch.p_mask == 1.0
    assert 0.15 < float(full_rows.float().mean()) < 0.25
    assert batch.masked[full_rows].all()


def hand_batch():
    # Two rows of 3 positions, vocabulary 2. Row 0 masks position 0 (p=0.5); row 1 masks 1 and 2 (p=0.25).
    logits = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]],
                           [[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]]])
    targets = torch.tensor([[0, 0, 1], [0, 1, 1]])
    masked = torch.tensor([[True, False, False], [False, True, True]])
    batch = MaskedBatch(noisy=torch.zeros(2, 3, dtype=torch.long), masked=masked,
                        p_mask=torch.tensor([0.5, 0.25]))
    return logits, targets, batch


def test_llada_weighting_hand_worked():
    logits, targets, batch = hand_batch()
    valid = torch.tensor([[True, True, True], [True, True, False]])
    ce_a = math.log(2.0)                                # uniform over 2
    ce_b = -math.log(math.exp(0) / (math.exp(2) + 1))   # target 1 vs logit 2 for class 0
    ce_c = -math.log(math.exp(1) / (math.exp(1) + 1))   # target 1 with logit 1
    expected = (ce_a / 0.5 / 3 + ce_b / 0.25 / 2 + ce_c / 0.25 / 2) / 2
    loss = masked_diffusion_loss(logits, targets, batch, valid, weighting="llada")
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_unweighted_is_plain_mean_over_masked():
    logits, targets, batch = hand_batch()
    valid = torch.ones(2, 3, dtype=torch.bool)
    expected = F.cross_entropy(logits[batch.masked], targets[batch.masked]).item()
    assert masked_diffusion_loss(logits, targets, batch, valid, weighting="none").item() == pytest.approx(expected)


def test_nothing_masked_gives_zero_not_nan_and_keeps_graph():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    batch = MaskedBatch(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.bool), torch.ones(2))
    for weighting in ("llada", "none"):
        loss = masked_diffusion_loss(logits, torch.zeros(2, 3, dtype=torch.long), batch,
                                     torch.ones(2, 3, dtype=torch.bool), weighting)
        assert loss.item() == 0.0
        loss.backward()


def test_bad_weighting_is_named():
    logits, targets, batch = hand_batch()
    with pytest.raises(ValueError, match="weighting"):
        masked_diffusion_loss(logits, targets, batch, torch.ones(2, 3, dtype=torch.bool), "1/t")


def test_next_token_loss_scores_only_valid():
    logits = torch.tensor([[[3.0, 0.0], [0.0, 0.0]]])
    targets = torch.tensor([[0, 1]])
    valid = torch.tensor([[True, False]])
    expected = -math.log(math.exp(3) / (math.exp(3) + 1))
    assert next_token_loss(logits, targets, valid).item() == pytest.approx(expected)


@pytest.mark.parametrize("objective", ["diffusion", "ar"])
def test_response_loss_is_the_objective_of_the_model(objective, real_clips):
    """response_loss picks the model's objective and equals the loss assembled by hand from its parts."""
    from dllm_asr.model.loading import build_model
    from dllm_asr.training.objectives import encode_transcripts, response_loss, transcript_and_eos
    from tests.helpers import tiny_model_config

    torch.manual_seed(0)
    model = build_model(tiny_model_config(objective=objective)).eval()
    texts = ["the quick brown fox", "hello"]
    audio = model.encode_audio(real_clips[:2])
    ids, text_lengths = encode_transcripts(model.tokenizer, texts, model.eos_id)
    with torch.no_grad():
        got = response_loss(model, audio, texts, "llada", 1e-3, 0.0, torch.Generator().manual_seed(3))
        if objective == "ar":
            expected = next_token_loss(model.response_logits(audio, ids, causal=True), ids,
                                       transcript_and_eos(ids, text_lengths))
        else:
            valid = torch.ones_like(ids, dtype=torch.bool)
            noisy = forward_mask(ids, valid, model.mask_id, generator=torch.Generator().manual_seed(3))
            expected = masked_diffusion_loss(model.response_logits(audio, noisy.noisy), ids, noisy, valid, "llada")
    assert got.item() == pytest.approx(expected.item(), rel=1e-6) and got.item() > 0


def test_response_loss_with_block_lengths_hides_positions_past_each_rows_block(real_clips):
    """Duration-sized blocks (`TrainConfig.response_blocks: duration`): each row is EOS-padded to
    its own block (at least its transcript + 1), and the positions past it are hidden from
    attention (the lengths reach the decoder), never masked and never scored."""
    from dllm_asr.model.loading import build_model
    from dllm_asr.training.objectives import encode_transcripts, response_loss
    from tests.helpers import tiny_model_config

    torch.manual_seed(0)
    model = build_model(tiny_model_config()).eval()
    texts = ["the quick brown fox", "hello"]
    audio = model.encode_audio(real_clips[:2])
    fox = len(model.tokenizer(texts[0], add_special_tokens=False)["input_ids"])
    assert fox + 1 > 3  # so row 0's block of 3 must grow to hold its transcript
    calls = []
    plain_logits = model.response_logits

    def recording_logits(audio, tokens, lengths=None, **kwargs):
        calls.append((tokens.clone(), lengths))
        return plain_logits(audio, tokens, lengths, **kwargs)

    model.response_logits = recording_logits
    with torch.no_grad():
        got = response_loss(model, audio, texts, "llada", 1e-3, 1.0, torch.Generator().manual_seed(3),
                            block_lengths=torch.tensor([3, 10]))
    (tokens, lengths), = calls
    assert lengths.tolist() == [fox + 1, 10] and tokens.shape == (2, max(fox + 1, 10))
    assert (tokens[0, :fox + 1] == model.mask_id).all() and (tokens[0, fox + 1:] == model.eos_id).all()
    assert (tokens[1] == model.mask_id).all()  # full_mask_fraction 1: every position of its block

    ids, _ = encode_transcripts(model.tokenizer, texts, model.eos_id, length=tokens.shape[1])
    valid = torch.arange(tokens.shape[1])[None] < lengths[:, None]
    noisy = forward_mask(ids, valid, model.mask_id, 1e-3, 1.0, torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = masked_diffusion_loss(plain_logits(audio, noisy.noisy, lengths), ids, noisy, valid, "llada")
    assert got.item() == pytest.approx(expected.item(), rel=1e-6) and got.item() > 0


def test_eos_padded_cuts_or_pads_with_eos():
    from dllm_asr.training.objectives import eos_padded

    ids = torch.tensor([[5, 6, 2, 2], [7, 2, 2, 2]])
    assert eos_padded(ids, 3, eos_id=2).tolist() == [[5, 6, 2], [7, 2, 2]]
    assert eos_padded(ids, 6, eos_id=2).tolist() == [[5, 6, 2, 2, 2, 2], [7, 2, 2, 2, 2, 2]]
