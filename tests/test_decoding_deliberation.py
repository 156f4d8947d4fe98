"""Deliberation of a prior transcript (Whisper-LLaDA 3.3.1, docs/algorithms.md 3e)."""
from __future__ import annotations

import pytest
import torch

from dllm_asr.decoding import (
    DecodeOptions,
    decode,
    deliberate,
    deliberate_semi_ar,
    mask_low_confidence,
    mask_random,
    pack_priors,
)
from dllm_asr.decoding.deliberation import chunk_bounds, masked_count
from tests.mock_predictors import HashPredictor, TablePredictor

V, MASK, EOS, NEUTRAL = 12, 11, 10, 0


def options(**kw) -> DecodeOptions:
    return DecodeOptions(mask_id=MASK, eos_id=EOS, **kw)


PRIORS = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 1], [2, 3, 4], [5, 6, 7, 8, 9, 1, 2]]


def test_masked_count_floors_like_the_reference_or_rounds_half_up():
    ratios = (0.0, 0.1, 0.25, 0.3, 0.5, 0.9, 1.0)
    assert [masked_count(10, p) for p in ratios] == [0, 1, 2, 3, 5, 9, 10]
    assert [masked_count(10, p, "half-up") for p in ratios] == [0, 1, 3, 3, 5, 9, 10]
    assert masked_count(5, 0.3) == 1 and masked_count(5, 0.3, "half-up") == 2  # 1.5 tokens
    assert masked_count(3, 0.5) == 1 and masked_count(3, 0.5, "half-up") == 2
    with pytest.raises(ValueError, match="rounding must be one of"):
        masked_count(3, 0.5, "ceil")


def test_mask_random_masks_the_requested_fraction_reproducibly():
    prior, lengths = pack_priors(PRIORS, pad_id=EOS)
    assert (mask_random(prior, lengths, 0.5, MASK, seed=0) == MASK).sum(dim=1).tolist() == [5, 1, 3]
    masked = mask_random(prior, lengths, 0.5, MASK, seed=0, rounding="half-up")
    assert (masked == MASK).sum(dim=1).tolist() == [5, 2, 4]
    assert not (masked[1, 3:] == MASK).any()  # padding untouched
    unmasked = masked != MASK
    assert masked[unmasked].equal(prior[unmasked])
    assert masked.equal(mask_random(prior, lengths, 0.5, MASK, seed=0, rounding="half-up"))
    assert any(not masked.equal(mask_random(prior, lengths, 0.5, MASK, seed=s, rounding="half-up")) for s in (1, 2, 3))


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


def test_chunk_bounds_put_the_remainder_last_like_the_reference_or_split_evenly():
    assert chunk_bounds(10, 4) == [(0, 2), (2, 4), (4, 6), (6, 10)]  # 2, 2, 2, 4
    assert chunk_bounds(10, 4, "even") == [(0, 2), (2, 5), (5, 7), (7, 10)]  # 2, 3, 2, 3
    assert chunk_bounds(10, 2) == chunk_bounds(10, 2, "even") == [(0, 5), (5, 10)]
    assert chunk_bounds(7, 3) == chunk_bounds(7, 3, "even") == [(0, 2), (2, 4), (4, 7)]
    assert chunk_bounds(3, 4) == [(0, 0), (0, 0), (0, 0), (0, 3)]  # fewer tokens than chunks
    assert chunk_bounds(3, 4, "even") == [(0, 0), (0, 1), (1, 2), (2, 3)]


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


# ---------------------------------------------------------------- reference re-statement

def reference_fill(logits_of, x, steps):
    """Fill the masks of x (a list) in `steps` steps, as Whisper-LLaDA's correction loop does at
    batch size 1: the mask count m is spread over the steps (m // steps each, the first m % steps
    one more); each step the k masked positions whose argmax has the highest softmax probability
    take it (ties: lower position); no EOS rule. Returns (x, forward passes)."""
    count = x.count(MASK)
    passes = 0
    for k in [count // steps + (1 if s < count % steps else 0) for s in range(steps)]:
        if MASK not in x:
            break
        logits = logits_of(x)
        passes += 1
        probs = torch.softmax(logits.double(), dim=-1)
        masked = [p for p in range(len(x)) if x[p] == MASK]
        guess = {p: int(logits[p].argmax()) for p in masked}
        for p in sorted(masked, key=lambda p: (-float(probs[p, guess[p]]), p))[:k]:
            x[p] = guess[p]
    return x, passes


def reference_deliberation(logits_of, prior, mask, ratio, chunks, steps):
    """Whisper-LLaDA's deliberation of one prior, restated: returns (tokens without EOS, passes).

    low-confidence: one pass over a block of NEUTRAL tokens scores each prior token by its
    probability there; the int(n * ratio) lowest are masked and filled with min(steps, masked)
    steps. semi-ar: chunks of n // C tokens (the last takes the rest) are masked one after another
    and each filled with steps // C steps, later chunks seeing the corrected earlier ones.
    """
    n, x = len(prior), list(prior)
    if mask == "low-confidence":
        probs = torch.softmax(logits_of([NEUTRAL] * n).double(), dim=-1)
        scores = [float(probs[p, prior[p]]) for p in range(n)]
        for p in sorted(range(n), key=lambda p: (scores[p], p))[: int(n * ratio)]:
            x[p] = MASK
        x, passes = reference_fill(logits_of, x, max(1, min(steps, x.count(MASK))))
        passes += 1
    else:
        size, passes = n // chunks, 0
        for c in range(chunks):
            hi = n if c == chunks - 1 else (c + 1) * size
            x[c * size: hi] = [MASK] * (hi - c * size)
            x, used = reference_fill(logits_of, x, steps // chunks)
            passes += used
    return [t for t in x if t != EOS], passes


@pytest.mark.parametrize("seed", range(4))
def test_reference_rules_match_the_restated_whisper_llada_deliberation(seed):
    rng = torch.Generator().manual_seed(seed)
    predictor = HashPredictor(V, MASK, seed=seed)
    eos_seen = 0
    for case in range(40):
        n = int(torch.randint(1, 13, (1,), generator=rng))
        prior = torch.randint(0, EOS, (n,), generator=rng).tolist()
        mask = ("low-confidence", "semi-ar")[case % 2]
        ratio = float(torch.rand(1, generator=rng))
        chunks = int(torch.randint(1, 5, (1,), generator=rng))
        steps = int(torch.randint(chunks, 17, (1,), generator=rng))
        expected, passes = reference_deliberation(lambda x: predictor.row_logits(torch.tensor(x), 0), prior, mask,
                                                  ratio, chunks, steps)
        result = deliberate(predictor, torch.tensor([prior]), torch.tensor([n]), options(steps=steps), mask, ratio,
                            chunks, rules="reference", neutral_id=NEUTRAL)
        assert result.sequences() == [expected], (case, mask, n, ratio, chunks, steps)
        if mask == "semi-ar":  # the scoring pass is not a decode step
            assert int(result.nfe[0]) == passes
        eos_seen += len(expected) < n
    assert eos_seen  # some cases filled an EOS mid-transcript, which the reference drops


def test_semi_ar_steps_are_the_total_under_reference_rules_and_per_chunk_when_balanced():
    prior = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    conf = torch.linspace(0.9, 0.5, 8, dtype=torch.float64)[None]
    predictor = TablePredictor(prior.clone(), conf, V)
    shared = deliberate(predictor, prior, torch.tensor([8]), options(steps=4), "semi-ar", chunks=2)
    assert shared.committed == [[2, 2, 2, 2]] and shared.nfe.tolist() == [4]  # 4 steps: 2 per chunk
    per_chunk = deliberate(predictor, prior, torch.tensor([8]), options(steps=4), "semi-ar", chunks=2, rules="balanced")
    assert per_chunk.committed == [[1] * 8] and per_chunk.nfe.tolist() == [8]  # 4 steps in each chunk
    assert shared.sequences() == per_chunk.sequences() == prior.tolist()


def test_an_eos_filled_mid_transcript_is_dropped_by_reference_rules_and_ends_it_when_balanced():
    # Positions 0 and 1 are re-masked (lowest scores); the model fills position 1 with EOS.
    prior = torch.tensor([[1, 2, 3, 4, 5]])
    choice = torch.tensor([[7, EOS, 3, 4, 5]])
    conf = torch.tensor([[0.2, 0.3, 0.9, 0.9, 0.9]], dtype=torch.float64)
    kept = deliberate(TablePredictor(choice, conf, V), prior, torch.tensor([5]), options(steps=2), "low-confidence",
                      ratio=0.4)
    assert kept.sequences() == [[7, 3, 4, 5]] and kept.lengths.tolist() == [4]
    assert kept.confidences()[0] == [pytest.approx(0.2), None, None, None]
    ended = deliberate(TablePredictor(choice, conf, V), prior, torch.tensor([5]), options(steps=2), "low-confidence",
                       ratio=0.4, rules="balanced")
    assert ended.sequences() == [[7]]


def test_deliberate_names_bad_choices():
    prior, lengths = pack_priors(PRIORS, pad_id=EOS)
    with pytest.raises(ValueError, match="rules must be one of"):
        deliberate(HashPredictor(V, MASK), prior, lengths, options(), rules="paper")
    with pytest.raises(ValueError, match="mask must be random, low-confidence or semi-ar"):
        deliberate(HashPredictor(V, MASK), prior, lengths, options(), mask="everything")
    with pytest.raises(ValueError, match="chunk split must be one of"):
        chunk_bounds(4, 2, "odd")
