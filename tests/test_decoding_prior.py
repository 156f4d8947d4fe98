"""Prior-guided adaptive decoding (dLLM-ASR, docs/algorithms.md 3f): verify, correct, early exit, pruning."""
from __future__ import annotations

import pytest
import torch

from dllm_asr.decoding import DecodeOptions, build_prior_block, decode, pack_priors
from tests.mock_predictors import HashPredictor, TablePredictor

from dllm_asr.decoding.prior import select_exits

V, MASK, EOS = 12, 11, 10


def options(**kw) -> DecodeOptions:
    kw.setdefault("steps", 16)
    return DecodeOptions(mask_id=MASK, eos_id=EOS, prior_guided=True, **kw)


def confident(targets: list[list[int]], width: int, conf: float = 0.99) -> tuple[torch.Tensor, torch.Tensor]:
    """Tables predicting each row's target tokens, then EOS, with confidence `conf`."""
    choice = torch.full((len(targets), width), EOS, dtype=torch.long)
    for i, t in enumerate(targets):
        choice[i, : len(t)] = torch.tensor(t)
    return choice, torch.full((len(targets), width), conf, dtype=torch.float64)


def test_build_prior_block_appends_margin_masks():
    prior, lengths = pack_priors([[1, 2, 3], [4]], pad_id=0)
    block, block_lengths = build_prior_block(prior, lengths, options(margin=2))
    assert block.tolist() == [[1, 2, 3, MASK, MASK], [4, MASK, MASK, EOS, EOS]]
    assert block_lengths.tolist() == [5, 3]


def test_agreeing_predictor_finishes_in_one_pass():
    prior, lengths = pack_priors([[1, 2, 3, 4], [5, 6]], pad_id=0)
    choice, conf = confident([[1, 2, 3, 4], [5, 6]], 4 + 3)
    predictor = TablePredictor(choice, conf, V)
    result = decode(predictor, prior, options(margin=3), lengths)
    assert len(predictor.calls) == 1
    assert result.nfe.tolist() == [1, 1] and result.steps.tolist() == [1, 1]
    assert result.sequences() == [[1, 2, 3, 4], [5, 6]]
    assert result.block_lengths.tolist() == [5, 3]  # pruned right after the confident EOS


def test_disagreeing_predictor_fixes_exactly_that_position():
    truth = [7, 2, 9, 4, 1]
    prior = torch.tensor([[7, 2, 3, 4, 1]])  # position 2 is wrong
    choice, conf = confident([truth], 5 + 2)
    result = decode(TablePredictor(choice, conf, V), prior, options(margin=2))
    assert result.sequences() == [truth]
    changed = (result.tokens[0, :5] != prior[0]).nonzero().flatten().tolist()
    assert changed == [2]
    assert result.nfe.tolist() == [1]


def test_only_a_confident_disagreement_overrides_the_prior():
    prior = torch.tensor([[1, 2, 3]])
    choice, conf = confident([[1, 5, 3]], 3)
    conf[0, 1] = 0.5  # disagreement at position 1, but not confident
    predictor = TablePredictor(choice, conf, V)
    result = decode(predictor, prior, options(steps=3, trace=True))
    # Pass 1: positions 0 and 2 exit; position 1 is still live and shows its prior token.
    assert predictor.calls[1].tokens.tolist() == [[1, 2, 3]]
    assert result.trace[0].tolist() == [[1, 2, 3]]
    # Pass 2: no confident position left, so the most confident live one (position 1) must exit;
    # below the threshold it keeps its prior token, whose probability the pass did not give
    assert result.committed == [[2, 1]] and result.tokens.tolist() == [[1, 2, 3]]
    assert result.confidences() == [[pytest.approx(0.99), None, pytest.approx(0.99)]]


def test_a_forced_exit_fills_a_mask_with_the_prediction():
    prior = torch.tensor([[1, MASK, 3]])
    choice, conf = confident([[1, 5, 3]], 3)
    conf[0, 1] = 0.5
    result = decode(TablePredictor(choice, conf, V), prior, options(steps=3))
    assert result.tokens.tolist() == [[1, 5, 3]] and result.confidences() == [pytest.approx([0.99, 0.5, 0.99])]


def test_pruning_shrinks_what_the_predictor_receives():
    prior, lengths = pack_priors([[1, 2, 3, 4], [5, 6]], pad_id=0)
    width = 4 + 4
    first_choice, first_conf = confident([[1, 2, 3, 4], [5, 6]], width)
    first_conf[:, :] = 0.5  # tokens unsure in the first pass ...
    first_conf[0, 4] = first_conf[1, 2] = 0.99  # ... except each row's EOS
    later = confident([[1, 2, 3, 4], [5, 6]], width)
    predictor = TablePredictor(first_choice, first_conf, V, per_call={1: later})
    result = decode(predictor, prior, options(margin=4), lengths)
    assert [tuple(c.tokens.shape) for c in predictor.calls] == [(2, 8), (2, 5)]
    assert [c.lengths for c in predictor.calls] == [[8, 6], [5, 3]]
    assert predictor.calls[1].tokens.tolist() == [[1, 2, 3, 4, EOS], [5, 6, EOS, EOS, EOS]]
    assert result.block_lengths.tolist() == [5, 3]
    assert result.sequences() == [[1, 2, 3, 4], [5, 6]]
    assert result.nfe.tolist() == [2, 2]


def test_rows_that_finish_leave_the_batch():
    prior, lengths = pack_priors([[1, 2], [3, 4]], pad_id=0)
    choice, conf = confident([[1, 2], [3, 4]], 3)
    conf[1] = 0.4  # row 1 is never confident: one forced exit per pass
    predictor = TablePredictor(choice, conf, V)
    result = decode(predictor, prior, options(margin=1), lengths)
    assert [c.rows for c in predictor.calls] == [[0, 1], [1], [1]]
    assert result.nfe.tolist() == [1, 3]
    assert result.committed == [[3], [1, 1, 1]]


def test_max_steps_caps_the_passes_and_fills_every_mask():
    predictor = HashPredictor(V, MASK, seed=1)
    prior, lengths = pack_priors([[1, 2, 3, 4, 5, 6]], pad_id=0)
    result = decode(predictor, prior, options(steps=2, margin=3, exit_threshold=1.0), lengths)
    assert result.nfe.tolist() == [2]
    assert not (result.tokens == MASK).any()


def test_masks_inside_the_prior_get_filled():
    prior = torch.tensor([[1, MASK, 3]])
    choice, conf = confident([[1, 8, 3]], 3)
    result = decode(TablePredictor(choice, conf, V), prior, options())
    assert result.tokens.tolist() == [[1, 8, 3]] and result.nfe.tolist() == [1]


def test_no_prune_keeps_the_full_block():
    prior = torch.tensor([[1, 2]])
    choice, conf = confident([[1, 2]], 5)
    predictor = TablePredictor(choice, conf, V)
    result = decode(predictor, prior, options(margin=3, prune=False))
    assert result.block_lengths.tolist() == [5] and result.sequences() == [[1, 2]]


def test_select_exits_forces_one_per_stalled_row():
    scores = torch.tensor([[0.2, 0.5, 0.3], [0.95, 0.1, 0.92]]).double()
    live = torch.tensor([[True, False, True], [True, True, True]])
    exits = select_exits(scores, live, 0.9, last_pass=False)
    assert exits.tolist() == [[False, False, True], [True, False, True]]
    assert select_exits(scores, live, 0.9, last_pass=True).equal(live)


def test_batched_prior_decoding_equals_each_row_alone():
    predictor = HashPredictor(V, MASK, seed=2)
    predictor.position_table[:, EOS] += 1.0
    prior, lengths = pack_priors([[1, 2, 3, 4, 5], [6, 7], [8, 9, 1, 2]], pad_id=0)
    opts = options(margin=2, exit_threshold=0.6)
    batched = decode(predictor, prior, opts, lengths)
    for i, n in enumerate(lengths.tolist()):
        alone = decode(lambda t, r, l, i=i: predictor(t, r + i, l), prior[i : i + 1, :n], opts)
        assert batched.sequences()[i] == alone.sequences()[0]
        assert batched.nfe[i] == alone.nfe[0]


def test_prior_guided_confidence_is_the_probability_at_exit():
    # Pass 1: position 0 exits confident (0.99); the rest stay live. Pass 2 (last allowed): all
    # exit; position 1 agrees with its prior token below the threshold, the margin's mask is filled.
    predictor = TablePredictor(torch.tensor([[1, 2, 4, EOS]]),
                               torch.tensor([[0.99, 0.6, 0.7, 0.8]], dtype=torch.float64), V)
    prior, lengths = pack_priors([[1, 2]], EOS)
    result = decode(predictor, prior, options(steps=2, margin=2, exit_threshold=0.95), lengths)
    assert result.sequences() == [[1, 2, 4]]
    assert result.confidences() == [pytest.approx([0.99, 0.6, 0.7])]
