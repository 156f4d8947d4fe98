"""Deliberation of a prior transcript (Whisper-LLaDA 3.3.1, PAPERS.md 3e)."""
from __future__ import annotations

import pytest
import torch

from dllm_asr.decoding import (
    DecodeOptions,
    decode,
    deliberate_semi_ar,
    mask_low_confidence,
    mask_random,
    pack_priors,
)
from dllm_asr.decoding.deliberation import chunk_bounds, masked_count
from dllm_asr.decoding.mock import HashPredictor, TablePredictor

V, MASK, EOS, NEUTRAL = 12, 11, 10, 0


def options(**kw) -> DecodeOptions:
    return DecodeOptions(mask_id=MASK, eos_id=EOS, **kw)


PRIORS = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 1], [2, 3, 4], [5, 6, 7, 8, 9, 1, 2]]


def test_masked_count_rounds_half_up():
    assert [masked_count(10, p) for p in (0.0, 0.1, 0.25, 0.5, 0.9, 1.0)] == [0, 1, 3, 5, 9, 10]
    assert masked_count(3, 0.5) == 2


def test_mask_random_masks_the_requested_fraction_reproducibly():
    prior, lengths = pack_priors(PRIORS, pad_id=EOS)
    masked = mask_random(prior, lengths, 0.5, MASK, seed=0)
    assert (masked == MASK).sum(dim=1).tolist() == [5, 2, 4]
    assert not (masked[1, 3:] == MASK).any()  # padding untouched
    unmasked = masked != MASK
    assert masked[unmasked].equal(prior[unmasked])
    assert masked.equal(mask_random(prior, lengths, 0.5, MASK, seed=0))
    assert any(not masked.equal(mask_random(prior, lengths, 0.5, MASK, seed=s)) for s in (1, 2, 3))


def test_mask_random_rejects_bad_ratio():
    prior, lengths = pack_priors(PRIORS, pad_id=EOS)
    with pytest.raises(ValueError, match="mask ratio p must be in"):
        mask_random(prior, lengths, 1.5, MASK)


def test_mask_low_confidence_scores_prior_tokens_against_a_neutral_block():
    prior = torch.tensor([[1, 2, 3, 4, 5]])
    # The scoring pass predicts the prior with these probabilities at each position.
    conf = torch.tensor([[0.9, 0.2, 0.8, 0.3, 0.7]], dtype=torch.float64)
    predictor = TablePredictor(prior.clone(), conf, V)
    masked, scores = mask_low_confidence(predictor, prior, torch.tensor([5]), 0.4, MASK, NEUTRAL)
    assert predictor.calls[0].tokens.tolist() == [[NEUTRAL] * 5]
    assert masked.tolist() == [[1, MASK, 3, MASK, 5]]
    assert torch.allclose(scores, conf)


def test_mask_low_confidence_uses_the_probability_of_the_prior_token_not_the_top_one():
    prior = torch.tensor([[1, 2, 3]])
    choice = torch.tensor([[1, 7, 3]])  # position 1: the model prefers 7, so token 2 scores low
    conf = torch.tensor([[0.5, 0.9, 0.6]], dtype=torch.float64)
    masked, _ = mask_low_confidence(TablePredictor(choice, conf, V), prior, torch.tensor([3]), 0.34, MASK, NEUTRAL)
    assert masked.tolist() == [[1, MASK, 3]]


@pytest.mark.parametrize("eos_stop", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_deliberation_never_changes_an_unmasked_token(eos_stop, seed):
    predictor = HashPredictor(V, MASK, seed=seed)
    predictor.position_table[:, EOS] += 1.0  # so that the EOS stop fires sometimes
    prior, lengths = pack_priors(PRIORS, pad_id=EOS)
    init = mask_random(prior, lengths, 0.6, MASK, seed=seed)
    result = decode(predictor, init, options(steps=3, eos_early_stop=eos_stop), lengths)
    for i, n in enumerate(lengths.tolist()):
        # With the EOS stop a row may end early; every kept position is untouched.
        end = int(result.lengths[i]) if eos_stop else n
        kept = init[i, :end] != MASK
        assert result.tokens[i, :end][kept].equal(init[i, :end][kept])
        if not eos_stop:
            assert not (result.tokens[i, :n] == MASK).any()


def test_chunk_bounds():
    assert chunk_bounds(10, 2) == [(0, 5), (5, 10)]
    assert chunk_bounds(7, 3) == [(0, 2), (2, 4), (4, 7)]


def test_semi_ar_deliberation_masks_one_chunk_at_a_time_left_to_right():
    predictor = HashPredictor(V, MASK, seed=5)
    prior, lengths = pack_priors(PRIORS[:2], pad_id=EOS)
    opts = options(steps=2, eos_early_stop=False, trace=True)
    result = deliberate_semi_ar(predictor, prior, lengths, 2, opts)
    # Chunk 0 ([0,5) and [0,1)) fully masked, chunk 1 shows the prior.
    first = predictor.calls[0].tokens
    assert first[0].tolist() == [MASK] * 5 + PRIORS[0][5:]
    assert first[1, :3].tolist() == [MASK] + PRIORS[1][1:]
    after_chunk0 = result.trace[1]
    assert not (after_chunk0 == MASK).any()
    # Chunk 1 starts from the re-decoded chunk 0 with chunk 1 masked.
    second = predictor.calls[2].tokens
    assert second[0].tolist() == after_chunk0[0, :5].tolist() + [MASK] * 5
    assert second[1, :3].tolist() == after_chunk0[1, :1].tolist() + [MASK] * 2
    # Row 1's chunk 0 holds one mask: one step; every other chunk takes its 2 steps.
    assert result.nfe.tolist() == [4, 3] and result.steps.tolist() == [4, 3]
    assert result.committed == [[3, 2, 3, 2], [1, 1, 1]]
    assert len(result.trace) == 4 and result.trace[-1].equal(result.tokens)
    assert result.tokens[0, :5].equal(after_chunk0[0, :5])  # chunk 0 not touched by chunk 1


def test_semi_ar_deliberation_with_one_step_per_chunk_and_eos():
    # The model ends row 0 inside chunk 0: chunk 1 is then left alone (EOS fill), no extra passes.
    choice = torch.tensor([[1, 2, EOS, 4, 5, 6]])
    conf = torch.full((1, 6), 0.9, dtype=torch.float64)
    predictor = TablePredictor(choice, conf, V)
    result = deliberate_semi_ar(predictor, torch.tensor([[1, 2, 3, 4, 5, 6]]), torch.tensor([6]), 2, options(steps=1))
    assert result.sequences() == [[1, 2]]
    assert result.nfe.tolist() == [1]


def test_semi_ar_deliberation_rejects_bad_chunks():
    prior, lengths = pack_priors(PRIORS, pad_id=EOS)
    with pytest.raises(ValueError, match="chunks must be >= 1"):
        deliberate_semi_ar(HashPredictor(V, MASK), prior, lengths, 0, options())
