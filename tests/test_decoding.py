"""Diffusion decoding (docs/algorithms.md 3a-3d), batching and accounting, against hand-worked cases and an
independent batch-size-1 re-statement of LLaDA's reference `generate`."""
from __future__ import annotations

import pytest
import torch

from dllm_asr.decoding import (
    DecodeOptions,
    apply_eos_stop,
    as_mask_predictor,
    block_bounds,
    commit_above_threshold,
    commit_most_confident,
    commit_top_k,
    confidence_and_argmax,
    decode,
    num_transfer_tokens,
)
from dllm_asr.decoding.confidence import chunked_logsumexp, make_generator, probability_of
from tests.mock_predictors import HashPredictor, TablePredictor

V, MASK, EOS = 12, 11, 10


def options(**kw) -> DecodeOptions:
    return DecodeOptions(mask_id=MASK, eos_id=EOS, **kw)


def masks(batch: int, width: int) -> torch.Tensor:
    return torch.full((batch, width), MASK, dtype=torch.long)


def table(choice, confidence) -> TablePredictor:
    return TablePredictor(torch.tensor(choice), torch.tensor(confidence, dtype=torch.float64), V)


def commits_per_step(result, initial):
    """Positions that left the mask at each step of row 0, from the trace."""
    before, out = initial[0], []
    for block in result.trace:
        out.append(sorted(((before == MASK) & (block[0] != MASK)).nonzero().flatten().tolist()))
        before = block[0]
    return out


# ---------------------------------------------------------------- reference re-statement

def reference_generate(logits_of, length, steps, block_length, eos_stop=False, model_precision=False):
    """LLaDA's generate at batch size 1, in plain Python, from the algorithm's description.

    Blocks of block_length left to right, steps // num_blocks steps each; a block's quota is its
    mask count spread evenly (first count % steps steps one more); each step the model predicts
    every position, and the k masked positions of the current block with the highest softmax
    probability of their argmax token commit (ties: lower position). With eos_stop, positions
    after the first EOS become EOS after a step, and a step with no mask left in its block is
    skipped. model_precision: the softmax in the logits' dtype and the k chosen by torch.topk over
    the block's confidences (-inf elsewhere), ties as topk orders them. Returns (tokens, positions
    committed by the model per forward pass, passes).
    """
    x = [MASK] * length
    num_blocks = length // block_length
    per_block = steps // num_blocks
    history, passes = [], 0
    for b in range(num_blocks):
        lo, hi = b * block_length, (b + 1) * block_length
        count = sum(1 for p in range(lo, hi) if x[p] == MASK)
        quota = [count // per_block + (1 if s < count % per_block else 0) for s in range(per_block)]
        for k in quota:
            candidates = [p for p in range(lo, hi) if x[p] == MASK]
            if k == 0 or not candidates:
                continue
            logits = logits_of(x)
            passes += 1
            probs = torch.softmax(logits if model_precision else logits.double(), dim=-1)
            guess = {p: int(logits[p].argmax()) for p in candidates}
            ranked = sorted(candidates, key=lambda p: (-float(probs[p, guess[p]]), p))
            if model_precision:
                confidence = torch.full((length,), float("-inf"), dtype=probs.dtype)
                for p in candidates:
                    confidence[p] = probs[p, guess[p]]
                ranked = torch.topk(confidence, k).indices.tolist()
            for p in ranked[:k]:
                x[p] = guess[p]
            if eos_stop and EOS in x:
                first = x.index(EOS)
                x = x[: first + 1] + [EOS] * (length - first - 1)
            history.append(sorted(ranked[:k]))
    return x, history, passes


def accepted_combinations(max_length=10, max_steps=12):
    for length in range(1, max_length + 1):
        for block_length in [b for b in range(1, length + 1) if length % b == 0]:
            num_blocks = length // block_length
            for steps in range(num_blocks, max_steps + 1, num_blocks):
                yield length, steps, block_length


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_generate_on_every_accepted_combination(seed):
    predictor = HashPredictor(V, MASK, seed=seed)
    checked = 0
    for length, steps, block_length in accepted_combinations():
        ref_tokens, ref_history, ref_passes = reference_generate(
            lambda x: predictor.row_logits(torch.tensor(x), 0), length, steps, block_length
        )
        init = masks(1, length)
        opts = options(steps=steps, block_length=block_length, eos_early_stop=False, trace=True)
        result = decode(predictor, init, opts)
        assert result.tokens[0].tolist() == ref_tokens, (length, steps, block_length)
        assert commits_per_step(result, init) == ref_history, (length, steps, block_length)
        assert int(result.nfe[0]) == ref_passes
        same_by_count = decode(predictor, init, options(steps=steps, num_blocks=length // block_length,
                                                        eos_early_stop=False))
        assert same_by_count.tokens.equal(result.tokens)
        checked += 1
    assert checked > 150


@pytest.mark.parametrize("seed", [3, 4])
def test_matches_reference_with_eos_stop(seed):
    # Make EOS likely so that the stop actually fires in many cases.
    predictor = HashPredictor(V, MASK, seed=seed)
    predictor.position_table[:, EOS] += 2.5
    fired = 0
    for length, steps, block_length in accepted_combinations(max_length=9, max_steps=9):
        ref_tokens, ref_history, ref_passes = reference_generate(
            lambda x: predictor.row_logits(torch.tensor(x), 0), length, steps, block_length, eos_stop=True
        )
        result = decode(predictor, masks(1, length), options(steps=steps, block_length=block_length))
        assert result.tokens[0].tolist() == ref_tokens, (length, steps, block_length)
        assert int(result.nfe[0]) == ref_passes
        fired += EOS in ref_tokens[:-1]
    assert fired > 20


def reference_generate_batch_wide_eos(predictor, batch, length, steps):
    """LLaDA's single-block `generate` over a batch, with its batch-wide EOS rule: after a step,
    the first EOS committed in that step (first row, then first position) ends EVERY row there."""
    x = torch.full((batch, length), MASK)
    quota = [num_transfer_tokens(length, steps) for _ in range(batch)]
    for step in range(steps):
        if not (x == MASK).any():
            break
        logits = predictor(x, torch.arange(batch), torch.full((batch,), length))
        committed = torch.zeros_like(x, dtype=torch.bool)
        for r in range(batch):
            probs = torch.softmax(logits[r].double(), dim=-1)
            masked = [p for p in range(length) if x[r, p] == MASK]
            guess = {p: int(logits[r, p].argmax()) for p in masked}
            for p in sorted(masked, key=lambda p: (-float(probs[p, guess[p]]), p))[: quota[r][step]]:
                x[r, p], committed[r, p] = guess[p], True
        eos = (committed & (x == EOS)).nonzero()
        if len(eos):
            x[:, int(eos[0, 1]):] = EOS
    return x


def test_batch_wide_eos_equals_per_row_only_at_batch_size_one():
    predictor = HashPredictor(V, MASK, seed=11)
    predictor.position_table[:, EOS] += 2.5  # EOS often
    for length in range(2, 9):
        for steps in range(1, length + 1):
            expected = reference_generate_batch_wide_eos(predictor, 1, length, steps)
            assert decode(predictor, masks(1, length), options(steps=steps)).tokens.equal(expected), (length, steps)
    # Two rows: row 0 ends at position 1 in step 2; the batch-wide rule cuts row 1 there too.
    choice = torch.tensor([[5, EOS, 6, 7], [1, 2, 3, 4]])
    conf = torch.tensor([[0.9, 0.8, 0.3, 0.2], [0.9, 0.8, 0.7, 0.6]], dtype=torch.float64)
    batch_wide = reference_generate_batch_wide_eos(TablePredictor(choice, conf, V), 2, 4, 4)
    assert batch_wide.tolist() == [[5, EOS, EOS, EOS], [1, EOS, EOS, EOS]]
    per_row = decode(TablePredictor(choice, conf, V), masks(2, 4), options(steps=4))
    assert per_row.tokens.tolist() == [[5, EOS, EOS, EOS], [1, 2, 3, 4]]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reference_numerics_match_reference_generate_in_low_precision(dtype):
    """Rounded to bf16/fp16, logits and probabilities tie often; "reference" numerics then commit
    what LLaDA's code commits (softmax in that dtype, topk's tie order)."""
    predictor = HashPredictor(V, MASK, seed=7)
    predictor.position_table[1::2] = predictor.position_table[0:-1:2]  # pairs of positions tie at step 1
    low = lambda tokens, rows, lengths: predictor(tokens, rows, lengths).to(dtype)  # noqa: E731
    checked = ties = 0
    for length, steps, block_length in accepted_combinations(max_length=8, max_steps=8):
        logits_of = lambda x: predictor.row_logits(torch.tensor(x), 0).to(dtype)  # noqa: E731
        ref_tokens, _, _ = reference_generate(logits_of, length, steps, block_length, model_precision=True)
        opts = options(steps=steps, block_length=block_length, eos_early_stop=False, numerics="reference")
        assert decode(low, masks(1, length), opts).tokens[0].tolist() == ref_tokens, (length, steps, block_length)
        checked += 1
        probs = torch.softmax(logits_of([MASK] * length), dim=-1).max(dim=-1).values
        ties += probs.unique().numel() < length
    assert checked > 60 and ties  # the first step alone already had tied confidences


def test_commit_top_k_takes_k_per_row_and_never_a_non_candidate():
    scores = torch.tensor([[0.5, 0.5, 0.5, float("-inf")], [0.1, 0.9, 0.3, 0.7]], dtype=torch.float64)
    chosen = commit_top_k(scores, torch.tensor([2, 5]))
    assert chosen.sum(dim=1).tolist() == [2, 4] and not chosen[0, 3]  # k beyond the candidates: all of them
    distinct = torch.tensor([[0.2, 0.8, 0.5, 0.1]], dtype=torch.float64)
    assert commit_top_k(distinct, torch.tensor([2])).equal(commit_most_confident(distinct, torch.tensor([2])))


def test_model_precision_probability_is_the_softmax_in_the_logits_dtype():
    logits = torch.tensor([[[2.0, 1.0, 0.5, -1.0]]], dtype=torch.bfloat16)
    tokens = torch.tensor([[0]])
    reference = torch.softmax(logits, dim=-1)[0, 0, 0]
    assert float(probability_of(logits, tokens, model_precision=True)[0, 0]) == float(reference)
    exact = torch.softmax(logits.double(), dim=-1)[0, 0, 0]
    assert float(probability_of(logits, tokens)[0, 0]) == pytest.approx(float(exact), rel=1e-6)
    assert float(reference) != pytest.approx(float(exact), rel=1e-6)  # bf16 rounding shows


@pytest.mark.parametrize("shape", [(3, 70, 50), (1, 1, 9), (2, 0, 5)])
def test_chunked_logsumexp_equals_logsumexp_whatever_the_chunks(shape):
    logits = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 5
    expected = torch.logsumexp(logits, dim=-1)
    for rows in (1, 7, 64, 1000):
        got = chunked_logsumexp(logits, rows_per_chunk=rows)
        assert got.shape == expected.shape and torch.equal(got, expected)


# ---------------------------------------------------------------- hand-worked cases

def test_num_transfer_tokens_splits_evenly_first_steps_take_extra():
    assert num_transfer_tokens(10, 4) == [3, 3, 2, 2]
    assert num_transfer_tokens(4, 2) == [2, 2]
    assert num_transfer_tokens(3, 5) == [1, 1, 1, 0, 0]
    assert sum(num_transfer_tokens(127, 8)) == 127


def test_block_bounds():
    assert block_bounds(8, options()) == [(0, 8)]
    assert block_bounds(8, options(num_blocks=4)) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert block_bounds(7, options(num_blocks=2)) == [(0, 3), (3, 7)]
    assert block_bounds(7, options(block_length=3)) == [(0, 3), (3, 6), (6, 7)]
    assert block_bounds(2, options(num_blocks=4)) == [(0, 1), (1, 2)]


def test_hand_worked_four_positions_two_steps():
    # Confidences 0.9, 0.5, 0.8, 0.3: quota [2, 2]; step 1 commits positions 0 and 2, step 2 the rest.
    predictor = table([[1, 2, 3, 4]], [[0.9, 0.5, 0.8, 0.3]])
    result = decode(predictor, masks(1, 4), options(steps=2, trace=True))
    assert commits_per_step(result, masks(1, 4)) == [[0, 2], [1, 3]]
    assert result.trace[0][0].tolist() == [1, MASK, 3, MASK]
    assert result.tokens[0].tolist() == [1, 2, 3, 4]
    assert result.nfe.tolist() == [2] and result.committed == [[2, 2]]


def test_hand_worked_five_positions_two_steps_first_step_takes_extra():
    predictor = table([[1, 2, 3, 4, 5]], [[0.2, 0.6, 0.7, 0.9, 0.3]])
    result = decode(predictor, masks(1, 5), options(steps=2, trace=True))
    assert commits_per_step(result, masks(1, 5)) == [[1, 2, 3], [0, 4]]


def test_more_steps_than_masks_skips_empty_steps():
    predictor = table([[1, 2, 3]], [[0.5, 0.9, 0.7]])
    result = decode(predictor, masks(1, 3), options(steps=8, trace=True))
    assert commits_per_step(result, masks(1, 3)) == [[1], [2], [0]]
    assert result.nfe.tolist() == [3]


def test_semi_ar_never_commits_right_of_current_block():
    # Position 3 is the most confident but lies in the second sub-block.
    predictor = table([[1, 2, 3, 4]], [[0.4, 0.5, 0.6, 0.99]])
    result = decode(predictor, masks(1, 4), options(steps=4, num_blocks=2, trace=True))
    assert commits_per_step(result, masks(1, 4)) == [[1], [0], [3], [2]]


def test_semi_ar_blocks_with_uneven_steps_still_decode_everything():
    predictor = HashPredictor(V, MASK, seed=5)
    result = decode(predictor, masks(1, 9), options(steps=5, block_length=4, eos_early_stop=False))
    assert not (result.tokens == MASK).any()
    assert int(result.nfe[0]) == 5  # blocks of 4, 4, 1 positions get 2, 2, 1 steps


def test_committed_tokens_are_never_remasked_or_changed():
    predictor = HashPredictor(V, MASK, seed=6)
    result = decode(predictor, masks(1, 12), options(steps=6, eos_early_stop=False, trace=True))
    for before, after in zip(result.trace, result.trace[1:]):
        settled = before != MASK
        assert after[settled].equal(before[settled])


# ---------------------------------------------------------------- temperature and random remasking

def test_confidence_comes_from_unnoised_softmax():
    logits = torch.randn(2, 5, V, generator=torch.Generator().manual_seed(0))
    tokens, scores = confidence_and_argmax(logits, 50.0, "low_confidence", make_generator(1), MASK)
    probs = torch.softmax(logits.double(), dim=-1)
    assert torch.allclose(scores, probs.gather(-1, tokens[..., None])[..., 0])
    assert not tokens.equal(logits.argmax(-1))  # at this temperature the noise moves some choices
    assert not (tokens == MASK).any()


def test_greedy_choice_skips_the_mask_and_scores_in_double_precision():
    logits = torch.randn(3, 4, V, generator=torch.Generator().manual_seed(2))
    logits[0, 1, MASK] = 9.0  # the mask is the best logit here: the runner-up is chosen
    logits[1, 2, 3] = 40.0    # a near-certain position
    reference = logits.clone()
    reference[..., MASK] = float("-inf")
    tokens, scores = confidence_and_argmax(logits, 0.0, "low_confidence", make_generator(1), MASK)
    assert tokens.equal(reference.argmax(-1)) and int(tokens[0, 1]) != MASK
    probs = torch.softmax(logits.double(), dim=-1)
    assert scores.dtype == torch.float64
    assert torch.allclose(scores, probs.gather(-1, tokens[..., None])[..., 0], rtol=1e-6, atol=0)
    assert float(scores[1, 2]) > 0.999999
    assert logits[0, 1, MASK] == 9.0  # the caller's logits are untouched


def test_gumbel_sampling_follows_softmax_at_temperature_one():
    rows = 4000
    probs = torch.tensor([0.5, 0.3, 0.2] + [0.0] * (V - 3))
    logits = torch.log(probs.clamp_min(1e-12)).expand(rows, 1, V)
    predictor = as_mask_predictor(lambda t: logits[: t.shape[0]])
    result = decode(predictor, masks(rows, 1), options(steps=1, temperature=1.0, seed=0))
    freq = torch.bincount(result.tokens[:, 0], minlength=V).double() / rows
    assert torch.allclose(freq[:3], probs[:3].double(), atol=0.03)


def test_temperature_is_reproducible_with_a_seed():
    predictor = HashPredictor(V, MASK, seed=7)
    opts = options(steps=4, temperature=1.5, seed=123)
    first = decode(predictor, masks(3, 8), opts)
    again = decode(predictor, masks(3, 8), opts)
    other = decode(predictor, masks(3, 8), options(steps=4, temperature=1.5, seed=124))
    assert first.tokens.equal(again.tokens)
    assert not first.tokens.equal(other.tokens)


def test_random_remasking_commits_argmax_in_a_seeded_random_order():
    choice = [[1, 2, 3, 4, 5, 6, 7, 8]]
    confidence = [[0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]]
    orders = []
    for seed in range(4):
        result = decode(table(choice, confidence), masks(1, 8),
                        options(steps=8, remasking="random", seed=seed, trace=True))
        assert result.tokens[0].tolist() == choice[0]
        orders.append(tuple(p[0] for p in commits_per_step(result, masks(1, 8))))
    again = decode(table(choice, confidence), masks(1, 8), options(steps=8, remasking="random", seed=0, trace=True))
    assert tuple(p[0] for p in commits_per_step(again, masks(1, 8))) == orders[0]
    assert len(set(orders)) > 1  # the order depends on the seed, not on confidence
    assert all(sorted(o) == list(range(8)) for o in orders)


# ---------------------------------------------------------------- EOS early stop, per row

def test_eos_stop_is_per_row_and_finished_rows_leave_the_batch():
    # One token per step. Row 0's most confident guess is EOS at position 1, row 1's EOS at
    # position 3, row 2 never predicts EOS.
    choice = [[1, EOS, 2, 3, 4, 5], [1, 2, 3, EOS, 4, 5], [1, 2, 3, 4, 5, 6]]
    confidence = [[0.5, 0.95, 0.4, 0.4, 0.4, 0.4], [0.6, 0.5, 0.4, 0.95, 0.3, 0.3], [0.6] * 6]
    predictor = table(choice, confidence)
    result = decode(predictor, masks(3, 6), options(steps=6))
    assert [c.rows for c in predictor.calls] == [[0, 1, 2], [0, 1, 2], [1, 2], [1, 2], [2], [2]]
    assert result.nfe.tolist() == [2, 4, 6]
    assert result.steps.tolist() == [2, 4, 6]
    assert result.tokens.tolist() == [[1] + [EOS] * 5, [1, 2, 3, EOS, EOS, EOS], [1, 2, 3, 4, 5, 6]]
    assert result.lengths.tolist() == [1, 3, 6]
    assert result.committed[0] == [5, 1]  # the EOS and its fill of positions 2..5, then position 0
    assert result.sequences() == [[1], [1, 2, 3], [1, 2, 3, 4, 5, 6]]


def test_eos_stop_in_first_sub_block_finishes_the_row():
    predictor = table([[1, EOS, 2, 3, 4, 5, 6, 7]], [[0.6, 0.9] + [0.99] * 6])
    result = decode(predictor, masks(1, 8), options(steps=8, num_blocks=4))
    assert result.tokens[0].tolist() == [1] + [EOS] * 7
    assert result.nfe.tolist() == [2]


def test_apply_eos_stop_respects_padding_and_leaves_masks_before_eos():
    tokens = torch.tensor([[MASK, 3, EOS, 4, MASK, 7], [1, 2, 3, 4, 5, 6]])
    out = apply_eos_stop(tokens, torch.tensor([5, 6]), EOS)
    assert out.tolist() == [[MASK, 3, EOS, EOS, EOS, 7], [1, 2, 3, 4, 5, 6]]


# ---------------------------------------------------------------- threshold (Fast-dLLM)

def test_threshold_hand_worked():
    predictor = table([[1, 2, 3, 4]], [[0.95, 0.5, 0.92, 0.3]])
    result = decode(predictor, masks(1, 4), options(threshold=0.9, trace=True))
    assert commits_per_step(result, masks(1, 4)) == [[0, 2], [1], [3]]
    assert result.steps.tolist() == [3] and result.committed == [[2, 1, 1]]


def test_confidence_is_the_probability_at_the_step_that_committed_the_token():
    # The predictor changes its mind after the first pass: positions 0 and 2 commit at pass 1
    # (0.95, 0.92), position 1 at pass 2 (0.6), position 3 at pass 3 (0.4), and the recorded
    # confidence of each is the one it had when it committed, not at the last pass.
    later = (torch.tensor([[1, 2, 3, 4]]), torch.tensor([[0.2, 0.6, 0.2, 0.4]], dtype=torch.float64))
    predictor = TablePredictor(torch.tensor([[1, 2, 3, 4]]), torch.tensor([[0.95, 0.5, 0.92, 0.3]], dtype=torch.float64),
                               V, per_call={1: later})
    result = decode(predictor, masks(1, 4), options(threshold=0.9))
    assert result.sequences() == [[1, 2, 3, 4]]
    assert result.confidences() == [pytest.approx([0.95, 0.6, 0.92, 0.4])]


def test_confidence_under_random_remasking_is_still_the_token_probability():
    predictor = table([[1, 2, 3]], [[0.7, 0.5, 0.3]])
    result = decode(predictor, masks(1, 3), options(steps=3, remasking="random", seed=0))
    assert result.confidences() == [pytest.approx([0.7, 0.5, 0.3])]


def test_given_tokens_have_no_confidence():
    init = torch.tensor([[1, MASK, 3]])
    result = decode(table([[1, 2, 3]], [[0.9, 0.8, 0.7]]), init, options(steps=1))
    assert result.confidences() == [[None, pytest.approx(0.8), None]]


def test_commit_above_threshold_always_takes_the_best():
    scores = torch.tensor([[0.1, 0.3, float("-inf")], [0.95, 0.2, 0.91], [float("-inf")] * 3]).double()
    chosen = commit_above_threshold(scores, 0.9)
    assert chosen.tolist() == [[False, True, False], [True, False, True], [False, False, False]]


def test_commit_most_confident_never_picks_non_candidates():
    scores = torch.tensor([[0.1, float("-inf"), 0.3, 0.2]]).double()
    assert commit_most_confident(scores, torch.tensor([5])).tolist() == [[True, False, True, True]]
    assert commit_most_confident(scores, torch.tensor([1])).tolist() == [[False, False, True, False]]


@pytest.mark.parametrize("tau", [0.05, 0.3, 0.9, 1.0])
def test_threshold_commits_at_least_one_per_step_and_terminates(tau):
    predictor = HashPredictor(V, MASK, seed=8)
    lengths = torch.tensor([9, 4, 12, 1])
    for num_blocks in (None, 3):
        result = decode(predictor, masks(4, 12), options(threshold=tau, num_blocks=num_blocks,
                                                         eos_early_stop=False), lengths)
        assert not (result.tokens == MASK).any()
        for row, counts in enumerate(result.committed):
            assert all(c >= 1 for c in counts) and sum(counts) == int(lengths[row])
            assert len(counts) == int(result.steps[row]) <= int(lengths[row])
    if tau == 1.0:  # nothing reaches 1.0 exactly: one token per step
        assert result.steps.tolist() == lengths.tolist()


def test_threshold_inside_semi_ar_blocks():
    predictor = table([[1, 2, 3, 4]], [[0.5, 0.95, 0.99, 0.99]])
    result = decode(predictor, masks(1, 4), options(threshold=0.9, num_blocks=2, trace=True))
    assert commits_per_step(result, masks(1, 4)) == [[1], [0], [2, 3]]


# ---------------------------------------------------------------- batching and accounting

@pytest.mark.parametrize(
    "kw",
    [dict(steps=8), dict(steps=6, num_blocks=3), dict(steps=7, block_length=3), dict(threshold=0.5),
     dict(steps=5, eos_early_stop=False)],
)
def test_batched_rows_equal_decoding_each_row_alone(kw):
    predictor = HashPredictor(V, MASK, seed=9)
    predictor.position_table[:, EOS] += 1.5
    lengths = torch.tensor([10, 3, 7, 0, 10])
    batched = decode(predictor, masks(5, 10), options(**kw), lengths)
    for i, n in enumerate(lengths.tolist()):
        alone_predictor = lambda t, r, l, i=i: predictor(t, r + i, l)  # noqa: E731
        alone = decode(alone_predictor, masks(1, n), options(**kw))
        assert batched.tokens[i, :n].tolist() == alone.tokens[0].tolist()
        assert batched.nfe[i] == alone.nfe[0] and batched.committed[i] == alone.committed[0]
        assert (batched.tokens[i, n:] == EOS).all()
    assert int(batched.nfe[3]) == 0


def test_predictor_gets_only_active_rows_and_their_width():
    predictor = HashPredictor(V, MASK, seed=10)
    decode(predictor, masks(3, 9), options(steps=9, eos_early_stop=False), torch.tensor([2, 5, 3]))
    assert [c.rows for c in predictor.calls] == [[0, 1, 2]] * 2 + [[1, 2]] + [[1]] * 2
    assert [tuple(c.tokens.shape) for c in predictor.calls] == [(3, 5)] * 2 + [(2, 5)] + [(1, 5)] * 2
    assert predictor.calls[2].lengths == [5, 3]


def test_trace_and_accounting():
    predictor = HashPredictor(V, MASK, seed=11)
    result = decode(predictor, masks(2, 6), options(steps=3, trace=True, eos_early_stop=False))
    assert len(result.trace) == 3 and all(t.shape == (2, 6) for t in result.trace)
    assert result.trace[-1].equal(result.tokens)
    assert [int((t == MASK).sum()) for t in result.trace] == [8, 4, 0]
    assert result.committed == [[2, 2, 2], [2, 2, 2]] and result.nfe.tolist() == [3, 3]
    assert result.wall_time > 0
    assert decode(predictor, masks(2, 6), options(steps=3)).trace is None


def test_partly_masked_init_keeps_its_tokens():
    predictor = HashPredictor(V, MASK, seed=12)
    init = torch.tensor([[3, MASK, 4, MASK, MASK, 5]])
    result = decode(predictor, init, options(steps=2, eos_early_stop=False))
    assert result.tokens[0, [0, 2, 5]].tolist() == [3, 4, 5]
    assert result.committed == [[2, 1]]


def test_plain_function_adapter():
    logits = torch.zeros(1, 3, V)
    logits[0, :, 4] = 5.0
    result = decode(as_mask_predictor(lambda t: logits[:, : t.shape[1]]), masks(1, 3), options(steps=1))
    assert result.tokens.tolist() == [[4, 4, 4]]


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize(
    "kw, name",
    [
        (dict(steps=0), "steps"),
        (dict(block_length=4, num_blocks=2), "block_length"),
        (dict(block_length=0), "block_length"),
        (dict(num_blocks=9, steps=8), "num_blocks"),
        (dict(temperature=-1.0), "temperature"),
        (dict(remasking="lowest"), "remasking"),
        (dict(threshold=0.0), "threshold"),
        (dict(threshold=1.5), "threshold"),
        (dict(threshold=0.9, remasking="random"), "threshold"),
        (dict(margin=-1), "margin"),
        (dict(exit_threshold=0.0), "exit_threshold"),
        (dict(prior_guided=True, num_blocks=2), "prior_guided"),
        (dict(prior_guided=True, threshold=0.9), "threshold"),
        (dict(steps=2.5), "steps"),
    ],
)
def test_bad_options_name_the_option(kw, name):
    with pytest.raises(ValueError, match=rf"^DecodeOptions\.{name}: "):
        options(**kw)


def test_mask_and_eos_must_differ():
    with pytest.raises(ValueError, match="DecodeOptions.eos_id"):
        DecodeOptions(mask_id=3, eos_id=3)


def test_bad_inputs_raise_one_line_errors():
    predictor = HashPredictor(V, MASK)
    with pytest.raises(ValueError, match="init must be a 2-D"):
        decode(predictor, torch.full((4,), MASK), options())
    with pytest.raises(ValueError, match="integer token ids"):
        decode(predictor, torch.zeros(1, 4), options())
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 4\]"):
        decode(predictor, masks(2, 4), options(), torch.tensor([4, 5]))
    with pytest.raises(ValueError, match="lengths must have shape"):
        decode(predictor, masks(2, 4), options(), torch.tensor([4]))
    bad = as_mask_predictor(lambda t: torch.zeros(t.shape[0], V))
    with pytest.raises(ValueError, match="mask predictor: expected logits of shape"):
        decode(bad, masks(1, 4), options())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_decodes_on_cuda_like_on_cpu():
    table_cpu = torch.randn(64, V, V, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    table_cpu[..., MASK] = -50.0

    def on(device):
        table = table_cpu.to(device)
        return lambda t, r, l: table[torch.arange(t.shape[1], device=t.device), t.clamp_max(V - 1)] + r[:, None, None]

    lengths = torch.tensor([9, 4, 12])
    for kw in (dict(steps=6, num_blocks=2), dict(threshold=0.5), dict(steps=4, temperature=1.0, seed=3)):
        cpu = decode(on("cpu"), masks(3, 12), options(**kw), lengths)
        gpu = decode(on("cuda"), masks(3, 12).cuda(), options(**kw), lengths.cuda())
        assert gpu.tokens.is_cuda and gpu.nfe.tolist() == gpu.steps.tolist()
        if "temperature" not in kw:  # CUDA and CPU generators draw different noise
            assert gpu.tokens.cpu().equal(cpu.tokens) and gpu.nfe.equal(cpu.nfe)
