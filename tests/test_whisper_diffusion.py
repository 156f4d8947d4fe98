"""The default model's family: Whisper's own decoder, run causally and adapted to masked diffusion."""

import json

import numpy as np
import pytest
import torch

from dllm_asr.audio.io import load_audio
from dllm_asr.config import DecoderConfig, EncoderConfig, LoraAdapterConfig, ModelConfig
from dllm_asr.evaluation.metrics import normalize as normalize_text
from dllm_asr.model.checkpoint import WEIGHTS_FILE, export_model, save_model
from dllm_asr.model.loading import build_model, load_model
from dllm_asr.model.decoders.whisper import EXACT_TOP_K
from dllm_asr.model.whisper_fallback import ARSamples, compression_ratio
from dllm_asr.transcription.long_form import transcribe_batch
from dllm_asr.transcription.options import DeliberationOptions
from dllm_asr.transcription.options import TranscribeOptions
from dllm_asr.transcription.strategies import deliberate_batch
from tests.helpers import ASSETS


def whisper_config(**changes) -> ModelConfig:
    return ModelConfig(encoder=EncoderConfig(source="whisper-tiny.en", ctc_head=False),
                       decoder=DecoderConfig(kind="whisper", source="encoder", frozen=False),
                       lora=LoraAdapterConfig(enabled=False), max_response_tokens=64, **changes)


@pytest.fixture(scope="module")
def whisper_model():
    torch.manual_seed(0)
    return build_model(whisper_config()).eval()


@pytest.fixture(scope="module")
def example():
    return load_audio(ASSETS / "example.wav")


def test_ar_baseline_matches_faster_whisper_on_the_example(whisper_model, example):
    faster_whisper = pytest.importorskip("faster_whisper")
    from dllm_asr.model.encoders import resolve_short_name

    reference = faster_whisper.WhisperModel(str(resolve_short_name("whisper-tiny.en")), device="cpu",
                                            compute_type="float32")
    segments, _ = reference.transcribe(str(ASSETS / "example.wav"), beam_size=1, without_timestamps=True,
                                       condition_on_previous_text=False, vad_filter=False)
    expected = " ".join(s.text.strip() for s in segments)
    ours = transcribe_batch(whisper_model, [example], TranscribeOptions(strategy="ar"))[0].text
    assert normalize_text(ours) == normalize_text(expected)
    assert normalize_text(ours) == normalize_text((ASSETS / "example.txt").read_text())


def test_shifted_logits_reproduce_the_pretrained_ar_decoding(whisper_model, example, monkeypatch):
    """Before any training the adapted decoder is the pretrained one: with causal attention, the
    shift and the same prompt, teacher-forced logits at response position i must predict the AR
    model's token i."""
    monkeypatch.setattr(whisper_model, "prompt_ids", whisper_model.base_prompt_ids)
    generated = whisper_model.generate_ar([example], 40)[0]
    tokens = torch.tensor([generated + [whisper_model.eos_id]])
    audio = whisper_model.encode(*whisper_model.features([example], pad_to_30s=True))
    logits = whisper_model.response_logits(audio, tokens, causal=True)
    assert logits.shape == (1, tokens.shape[1], whisper_model.decoder.vocab_size)
    logits[0, 0, whisper_model.eos_id] = float("-inf")  # as AR decoding's first step (suppress_blank)
    assert logits.argmax(-1)[0].tolist() == tokens[0].tolist()


def test_a_rows_logits_do_not_depend_on_its_batch(whisper_model, example):
    short = example[: len(example) // 3]
    audio = whisper_model.encode_audio([example, short])
    tokens = torch.full((2, 12), whisper_model.mask_id)
    tokens[0, :3] = torch.tensor([383, 2068, 7586])
    lengths = torch.tensor([12, 7])
    batched = whisper_model.response_logits(audio, tokens, lengths)
    alone = whisper_model.response_logits(whisper_model.encode_audio([short]), tokens[1:, :7], lengths[1:])
    torch.testing.assert_close(batched[1, :7], alone[0], atol=2e-4, rtol=1e-4)


def test_mask_is_an_input_only_token(whisper_model):
    decoder = whisper_model.decoder
    assert decoder.vocab_size == whisper_model.eos_id + 1 <= whisper_model.mask_id
    assert whisper_model.tokenizer.decode([whisper_model.eos_id, 50257, 50362]) == ""
    assert whisper_model.tokenizer("Hello there.")["input_ids"][0] == whisper_model.tokenizer.encode(" Hello")[0]


def test_the_pretrained_decoder_gets_whispers_english_only_prompt(whisper_model):
    """tiny.en's vocabulary holds <|en|> and <|transcribe|> too, but Whisper prompts an English-only
    checkpoint with [sot, notimestamps]; the diffusion decoder keeps the 4-token prompt it was
    trained with."""
    tokenizer = whisper_model.tokenizer
    assert tokenizer.english_only and tokenizer.eot == 50256
    assert tokenizer.prompt_ids() == [50257, 50362] == whisper_model.base_prompt_ids.tolist()
    assert tokenizer.task_prompt_ids() == [50257, 50258, 50358, 50362] == whisper_model.prompt_ids.tolist()


def test_initial_prompt_is_whispers_previous_text_context(whisper_model, example):
    tokenizer = whisper_model.tokenizer
    previous = tokenizer.token_id("<|startofprev|>")
    fox = tokenizer.encode(" Fox.")
    assert whisper_model.ar_prompt_ids(" Fox. ").tolist() == [previous, *fox, 50257, 50362]
    assert whisper_model.ar_prompt_ids(None).tolist() == whisper_model.ar_prompt_ids("  ").tolist() == [50257, 50362]
    long = whisper_model.ar_prompt_ids("word " * 400).tolist()
    assert len(long) == 1 + 223 + 2 and long[0] == previous  # Whisper keeps the text's last 448 // 2 - 1 tokens
    # the decoder follows the prompt's style, as Whisper's does: lower case, no full stop, "riverbank"
    plain = transcribe_batch(whisper_model, [example], TranscribeOptions(strategy="ar"))[0].text
    styled = transcribe_batch(whisper_model, [example], TranscribeOptions(
        strategy="ar", initial_prompt="quick brown fox jumps over the lazy dog near the riverbank"))[0].text
    assert plain == "The quick brown fox jumps over the lazy dog near the river bank."
    assert styled == "the quick brown fox jumps over the lazy dog near the riverbank"


def test_only_the_ar_decoders_take_an_initial_prompt():
    with pytest.raises(ValueError, match="--initial-prompt: only --strategy ar"):
        TranscribeOptions(strategy="threshold", initial_prompt="Names: Waldo.")
    assert TranscribeOptions(strategy="prior", initial_prompt="Names: Waldo.").initial_prompt == "Names: Waldo."


def record_encodes(model, monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every (features, frame counts) that `model.encode` is called with, in order."""
    seen = []
    encode = model.encode
    monkeypatch.setattr(model, "encode", lambda f, n: seen.append((f, n)) or encode(f, n))
    return seen


def test_pad_to_seconds_lets_the_decoder_read_silence_after_a_short_clip(whisper_model, example, monkeypatch):
    with pytest.raises(ValueError, match="--pad-to-seconds"):
        TranscribeOptions(pad_to_seconds=31)
    seen = record_encodes(whisper_model, monkeypatch)
    transcribe_batch(whisper_model, [example, example[:16000]],
                     TranscribeOptions(strategy="threshold", pad_to_seconds=3.0))
    features, lengths = seen[0]
    assert lengths.tolist() == [len(example) // 160, 300]  # the example is longer than 3 s
    assert torch.all(features[1, :, 100:300] == 0)  # the 1-s clip, then 2 s of zero frames
    alone = whisper_model.encode_audio([example[:16000]], pad_to_seconds=3.0)
    assert alone.lengths.tolist() == [150]  # encoder frames: one per two feature frames
    assert whisper_model.encode_audio([example[:16000]]).lengths.tolist() == [50]


def test_ar_strategy_encodes_each_clip_once_in_whispers_30s_window(whisper_model, example, monkeypatch):
    """`--strategy ar` reads no-speech and text from one 30-s encoder pass, not the clip's own
    frames first and the window again."""
    seen = record_encodes(whisper_model, monkeypatch)
    result = transcribe_batch(whisper_model, [example, example[:16000]], TranscribeOptions(strategy="ar"))
    assert [n.tolist() for _, n in seen] == [[3000, 3000]]
    window = whisper_model.encode(*whisper_model.features([example, example[:16000]], pad_to_30s=True))
    assert [r.tokens for r in result] == list(whisper_model.generate_ar([example, example[:16000]], 40, audio=window))
    assert whisper_model.reads_ar_window(window) and not whisper_model.reads_ar_window(
        whisper_model.encode_audio([example], pad_to_seconds=5.0))


def test_ar_pad_to_seconds_sets_the_window_whispers_decoder_reads(whisper_model, example, monkeypatch):
    """`ar_pad_to_seconds=10`: the AR strategy encodes 10-s windows; prior-guided decoding whose
    clips are already padded to 10 s hands that same pass to its AR prior (one encoder pass)."""
    with pytest.raises(ValueError, match="--ar-pad-to-seconds"):
        TranscribeOptions(ar_pad_to_seconds=0)
    clips = [example, example[:16000]]
    seen = record_encodes(whisper_model, monkeypatch)
    ar = transcribe_batch(whisper_model, clips, TranscribeOptions(strategy="ar", ar_pad_to_seconds=10))
    assert [n.tolist() for _, n in seen] == [[1000, 1000]]
    assert normalize_text(ar[0].text) == normalize_text((ASSETS / "example.txt").read_text())
    seen.clear()
    transcribe_batch(whisper_model, clips, TranscribeOptions(strategy="prior", pad_to_seconds=10, ar_pad_to_seconds=10))
    assert [n.tolist() for _, n in seen] == [[1000, 1000]]
    seen.clear()
    transcribe_batch(whisper_model, clips, TranscribeOptions(strategy="prior", pad_to_seconds=5, ar_pad_to_seconds=10))
    assert [n.tolist() for _, n in seen] == [[500, 500], [1000, 1000]]  # the diffusion decoder's 5 s, then the AR window
    window = whisper_model.encode_ar_window(clips, 10.0)
    assert whisper_model.reads_ar_window(window, 10.0) and window.lengths.tolist() == [1500, 1500]


def test_a_narrow_ar_window_is_whispers_1500_frames_the_rest_from_a_window_of_padding(whisper_model, example):
    """Under 30 s, the AR window holds each clip's own encoder frames (zero frames appended up to
    the window), then, from that row's length on, the encoder's output for a 30-s window of zero
    frames: the 1500 frames Whisper's decoder was trained to read."""
    clips = [example, example[:16000]]
    own = [whisper_model.encode_audio([clip], pad_to_seconds=3.0) for clip in clips]
    window = whisper_model.encode_ar_window(clips, 3.0)
    silent = whisper_model.encode(torch.zeros(1, whisper_model.encoder.n_mels, 3000), torch.tensor([3000])).embeds
    assert own[1].lengths[0] == 150 < own[0].lengths[0]  # the 3.8-s example runs past the window
    assert window.embeds.shape[:2] == (2, 1500) and window.lengths.tolist() == [1500, 1500]
    for row, part in enumerate(own):
        n = int(part.lengths[0])
        assert torch.equal(window.embeds[row, :n], part.embeds[0, :n])
        torch.testing.assert_close(window.embeds[row, n:], silent[0, n:])
    assert whisper_model.silent_window_states() is whisper_model.silent_window_states()  # encoded once
    assert whisper_model.complete_with_silence(window) is window


def test_clips_of_different_lengths_are_encoded_in_groups_each_row_as_if_alone(whisper_model, example, monkeypatch):
    """A 23-s clip among short ones is encoded in a group of its own, so the short clips are
    encoded over the 10-s window only, not over 23 s of padding; every row is what that clip
    encoded alone would give, in the batch's order."""
    long = np.concatenate([example] * 6)
    clips = [example[:16000], long, example]
    seen = record_encodes(whisper_model, monkeypatch)
    window = whisper_model.encode_ar_window(clips, 10)
    assert [n.tolist() for _, n in seen] == [[1000, 1000], [len(long) // 160]]
    assert window.embeds.shape[:2] == (3, 1500)
    for row, clip in enumerate(clips):
        alone = whisper_model.encode_ar_window([clip], 10)
        torch.testing.assert_close(window.embeds[row], alone.embeds[0], atol=1e-4, rtol=1e-4)
        assert window.encoder_lengths[row] == alone.encoder_lengths[0]


def test_a_10s_ar_window_completed_with_silence_transcribes_real_speech_as_the_30s_window(whisper_model, example):
    """The fast path's tolerance: the same words (after the Whisper normaliser) as Whisper's 30-s
    window, on the example recording and on its first second alone."""
    clips = [example, example[:16000]]
    plain = whisper_model.generate_ar(clips, 40, fallback=False)
    fast = whisper_model.generate_ar(clips, 40, pad_to_seconds=10, fallback=False)
    words = [[normalize_text(whisper_model.tokenizer.decode(row)) for row in rows] for rows in (plain, fast)]
    assert words[0] == words[1] and words[0][1] in {"the quick ground", "the quick brown"}


def test_ar_timestamps_decodes_with_whispers_time_tokens_and_drops_them(whisper_model, example, monkeypatch):
    """`ar_timestamps`: the prompt leaves out <|notimestamps|>, the first token written is a time
    token, the rows keep only text tokens (confidences aligned with them), and the example reads
    the same words as without timestamps."""
    with pytest.raises(ValueError, match="--ar-timestamps"):
        TranscribeOptions(strategy="threshold", ar_timestamps=True)
    clips = [example, example[:16000]]
    plain = whisper_model.generate_ar(clips, 40)
    fed = []
    forward = whisper_model.base_decoder.forward
    monkeypatch.setattr(whisper_model.base_decoder, "forward", lambda ids, *a, **k: fed.append(ids) or forward(ids, *a, **k))
    timed = whisper_model.generate_ar(clips, 40, timestamps=True)
    assert fed[0][0].tolist() == whisper_model.base_prompt_ids.tolist()[:-1]
    assert (fed[1][:, 0] > whisper_model.tokenizer.no_timestamps).all()  # time tokens fed back as themselves
    assert all(token < whisper_model.eos_id for row in timed for token in row)
    assert [len(c) for c in timed.confidences] == [len(row) for row in timed]
    words = [[normalize_text(whisper_model.tokenizer.decode(row)) for row in rows] for rows in (plain, timed)]
    assert words[0] == words[1]
    monkeypatch.undo()
    through_options = transcribe_batch(whisper_model, clips, TranscribeOptions(strategy="ar", ar_timestamps=True))
    assert [r.tokens for r in through_options] == list(timed)


def test_a_narrow_ar_window_redecodes_from_30s_only_the_rows_that_fail_whispers_checks(whisper_model, example,
                                                                                      monkeypatch):
    """`ar_pad_to_seconds=10`: a row whose 10-s greedy transcript fails Whisper's checks (here its
    compression ratio is made a loop's) is decoded again from the 30-s window, alone; the others
    keep their 10-s transcripts."""
    clips = [example, example[:16000]]
    narrow = whisper_model.generate_ar(clips, 40, pad_to_seconds=10, fallback=False)
    wide = whisper_model.generate_ar([clips[1]], 40, fallback=False)
    sample = whisper_model._sample_ar
    passes = []

    def second_row_loops_in_a_narrow_window(cross, *args, **kwargs):
        samples = sample(cross, *args, **kwargs)
        if not passes:  # the first pass is the narrow window's
            samples.ratios[1] = 3.0
        passes.append(cross.keys[0].shape[0])
        return samples
    monkeypatch.setattr(whisper_model, "_sample_ar", second_row_loops_in_a_narrow_window)
    seen = record_encodes(whisper_model, monkeypatch)
    cascaded = whisper_model.generate_ar(clips, 40, pad_to_seconds=10)
    assert [n.tolist() for _, n in seen] == [[1000, 1000], [3000]] and passes == [2, 1]
    assert cascaded[0] == narrow[0] and cascaded[1] == wide[0]
    assert cascaded.nfe == narrow.nfe + wide.nfe


def test_a_transcript_with_timestamps_that_stops_short_goes_on_from_its_last_time_token(whisper_model, example,
                                                                                         monkeypatch):
    """Whisper's seek (`timestamps=True`): the first pass over [example | 0.5 s | example] is made
    to stop after the first copy with a segment opened at 4.0 s and nothing in it; the rest of
    the clip from 4.0 s is decoded as a clip of its own and its text appended. A stop before
    `RESUME_MIN_SECONDS` is not continued."""
    from dllm_asr.model.whisper_diffusion import RESUME_MIN_SECONDS

    clip = np.concatenate([example, np.zeros(8000, dtype=np.float32), example])
    alone = whisper_model.generate_ar([example], 60, timestamps=True)
    decode_windows = whisper_model._decode_ar_windows
    passes = []

    def first_pass_stops_after_the_first_copy(audios, *args):
        best, nfe = decode_windows(audios, *args)
        if not passes:
            best.tokens[0], best.token_probs[0] = list(alone[0]), list(alone.confidences[0])
            best.unfinished_at[0], best.spans[0] = stop, list(alone.spans[0])
        passes.append([len(a) for a in audios])
        return best, nfe
    monkeypatch.setattr(whisper_model, "_decode_ar_windows", first_pass_stops_after_the_first_copy)
    stop = 4.0
    both = whisper_model.generate_ar([clip], 60, timestamps=True)
    assert passes == [[len(clip)], [len(clip) - 4 * 16000]]
    assert both[0][: len(alone[0])] == alone[0] and len(both.confidences[0]) == len(both[0])
    once = ASSETS.joinpath("example.txt").read_text().strip()
    assert whisper_model.tokenizer.decode(both[0]) == f"{once} {once}"
    # the rest's timed segments follow the first's, moved 4.0 s and len(alone) tokens on
    added = both.spans[0][len(alone.spans[0]):]
    assert both.spans[0][: len(alone.spans[0])] == alone.spans[0] and added
    assert added[0][0] >= 4.0 and added[-1][2] == len(both[0])
    passes.clear()
    stop = RESUME_MIN_SECONDS - 0.02
    assert whisper_model.generate_ar([clip], 60, timestamps=True)[0] == alone[0] and passes == [[len(clip)]]


def test_with_timestamps_each_segment_whisper_timed_is_a_segment_of_the_transcript(whisper_model, example):
    """Two sentences a second apart, decoded with timestamps: one segment each, in order, timed
    inside the clip, their texts the transcript's; without timestamps the window is one segment."""
    clip = np.concatenate([example, np.zeros(16000, dtype=np.float32), example])
    timed, = transcribe_batch(whisper_model, [clip], TranscribeOptions(strategy="ar", ar_timestamps=True))
    plain, = transcribe_batch(whisper_model, [clip], TranscribeOptions(strategy="ar"))
    once = ASSETS.joinpath("example.txt").read_text().strip()
    assert [s.text for s in timed.segments] == [once, once] and timed.text == f"{once} {once}"
    first, second = timed.segments
    assert 0.0 <= first.start < first.end <= second.start < second.end <= len(clip) / 16000
    assert 3.5 < second.start < 5.5  # the second sentence starts 4.8 s in
    assert len(plain.segments) == 1


@pytest.mark.parametrize("strategy", ["diffusion", "semi-ar", "threshold", "prior", "ar"])
def test_every_strategy_decodes_the_whisper_model(whisper_model, example, strategy):
    result = transcribe_batch(whisper_model, [example, example[:16000]],
                              TranscribeOptions(strategy=strategy, steps=8, num_blocks=2))
    assert len(result) == 2 and all(r.nfe >= 1 for r in result)
    assert all(whisper_model.mask_id not in r.tokens for r in result)


@pytest.mark.parametrize("mask", ["random", "low-confidence", "semi-ar"])
@pytest.mark.parametrize("use_audio", [True, False])
def test_deliberation_runs_with_and_without_audio(whisper_model, example, mask, use_audio):
    prior = (ASSETS / "example.txt").read_text()
    result = deliberate_batch(whisper_model, [example], [prior], DeliberationOptions(mask=mask, use_audio=use_audio))
    assert len(result) == 1 and whisper_model.mask_id not in result[0].tokens


def test_checkpoint_holds_only_the_adapted_decoder(whisper_model, example, tmp_path):
    with torch.no_grad():
        whisper_model.decoder.mask_embedding.add_(0.5)
        whisper_model.decoder.layers[0].fc1.bias.add_(0.01)
    try:
        save_model(whisper_model, tmp_path)
        from safetensors import safe_open

        with safe_open(str(tmp_path / WEIGHTS_FILE), "pt") as handle:
            names = set(handle.keys())
        assert "decoder.mask_embedding" in names and "decoder.layers.0.fc1.bias" in names
        assert not any(n.startswith(("base_decoder.", "encoder.")) or "embed_tokens" in n for n in names)
        loaded = load_model(tmp_path)
        tokens = torch.full((1, 10), whisper_model.mask_id)
        expected = whisper_model.response_logits(whisper_model.encode_audio([example]), tokens)
        torch.testing.assert_close(loaded.response_logits(loaded.encode_audio([example]), tokens), expected)
        # The AR baseline is the untouched pretrained decoder, whatever the deltas.
        assert loaded.generate_ar([example], 20)[0] == whisper_model.generate_ar([example], 20)[0]
    finally:
        with torch.no_grad():
            whisper_model.decoder.mask_embedding.sub_(0.5)
            whisper_model.decoder.layers[0].fc1.bias.sub_(0.01)


def test_export_interpolates_the_adapted_decoder_toward_the_pretrained_one(tmp_path, tiny_model):
    """WiSE-FT: every adapted parameter becomes base + keep * (tuned - base); nothing else moves."""
    torch.manual_seed(0)
    tuned = build_model(whisper_config()).eval()
    with torch.no_grad():
        for param in tuned.decoder.parameters():
            if param is not tuned.decoder.embed_tokens.weight:
                param.add_(torch.randn_like(param))
    save_model(tuned, tmp_path / "ckpt")
    export_model(tmp_path / "ckpt", tmp_path / "out", dtype="fp32", interpolate=0.25)
    loaded = load_model(tmp_path / "out")
    base = dict(tuned.base_decoder.named_parameters())
    for name, param in loaded.decoder.named_parameters():
        expected = base[name] + 0.25 * (dict(tuned.decoder.named_parameters())[name] - base[name])
        torch.testing.assert_close(param, expected, rtol=0, atol=1e-6)
    for name, param in loaded.base_decoder.named_parameters():
        torch.testing.assert_close(param, base[name], rtol=0, atol=0)
    exported = load_model(tmp_path / "ckpt")
    exported.interpolate_toward_base(1.0)  # keep everything: unchanged
    for (name, a), b in zip(exported.decoder.named_parameters(), tuned.decoder.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for keep in (0.0, 1.5):
        with pytest.raises(ValueError, match="--interpolate must be in"):
            export_model(tmp_path / "ckpt", tmp_path / "bad", interpolate=keep)
    save_model(tiny_model, tmp_path / "llada")
    with pytest.raises(ValueError, match="needs a model with a pretrained base decoder"):
        export_model(tmp_path / "llada", tmp_path / "bad", interpolate=0.5)
    assert not (tmp_path / "bad").exists()


def test_auto_dtype_is_bfloat16_only_on_a_cpu_with_bf16_matrix_instructions(monkeypatch):
    from dllm_asr.cli import build_parser
    from dllm_asr.model.decoders import base

    for native, on_cpu in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(base, "cpu_has_bf16_matmul", lambda native=native: native)
        assert base.resolve_dtype("auto", "cpu") == base.resolve_dtype("AUTO") == on_cpu
        assert base.resolve_dtype("auto", "cuda:0") == torch.float32
        assert base.resolve_dtype("float32", "cpu") == torch.float32  # a named dtype is kept
    for command in (["transcribe", "x.wav"], ["eval", "--data", "d", "--out", "o"], ["bench", "--data", "d", "--out", "o"]):
        assert build_parser().parse_args(command).dtype == "auto"
    with pytest.raises(ValueError, match="--dtype float8: unknown dtype; use auto or one of"):
        base.resolve_dtype("float8")


def test_a_bfloat16_decoder_recomputes_each_positions_top_logits_in_float32(whisper_model):
    decoder = whisper_model.decoder
    weight = decoder.embed_tokens.weight
    original = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.data = weight.data.to(torch.bfloat16)
            hidden = torch.randn(2, 3, weight.shape[1], generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
            rows = weight[: decoder.vocab_size].float()
            logits = decoder.logits(hidden)
            exact, rounded = hidden.float() @ rows.T, (hidden @ weight[: decoder.vocab_size].T).float()
            top = rounded.topk(EXACT_TOP_K, dim=-1).indices
            assert logits.dtype == torch.float32
            # each position's top few are float32 products, not bf16-rounded logits; the rest are rounded
            torch.testing.assert_close(logits.gather(-1, top), exact.gather(-1, top), rtol=0, atol=1e-5)
            assert not torch.equal(rounded.gather(-1, top), exact.gather(-1, top))
            assert torch.equal(logits.scatter(-1, top, 0.0), rounded.scatter(-1, top, 0.0))
            assert torch.equal(logits.argmax(-1), exact.argmax(-1))
            table = weight[: decoder.vocab_size]  # the pretrained decoder shares the table, and its copy
            assert whisper_model.base_decoder._float32_vocabulary(table) is decoder._float32_vocabulary(table)
            before = logits[0, 0, 5]
            weight[5] = 0.2 * hidden[0, 0]  # changed in place (as training does); token 5 now tops position (0, 0)
            after = decoder.logits(hidden)[0, 0]
            assert int(after.argmax()) == 5
            torch.testing.assert_close(after[5], hidden[0, 0].float() @ weight[5].float(), rtol=0, atol=1e-4)
            assert not torch.allclose(after[5], before, atol=1.0)  # not the stale copy's
    finally:
        weight.data = original


def test_annealed_attention_goes_from_causal_to_bidirectional(whisper_model):
    whisper_model.train()
    try:
        lengths = torch.tensor([6])
        whisper_model.attention_reveal = 0.0
        causal = whisper_model._self_mask(2, 6, lengths, causal=False)
        whisper_model.attention_reveal = 1.0
        full = whisper_model._self_mask(2, 6, lengths, causal=False)
    finally:
        whisper_model.eval()
    assert torch.equal(causal[0, 0], torch.ones(8, 8).tril().bool())
    assert bool(full.all())


def test_silence_and_noise_give_empty_transcripts(whisper_model, example):
    rng = np.random.default_rng(0)
    silence = np.zeros(5 * 16000, dtype=np.float32)
    noise = (0.05 * rng.standard_normal(5 * 16000)).astype(np.float32)
    results = transcribe_batch(whisper_model, [silence, example, noise], TranscribeOptions(steps=4))
    assert [r.text for r in results][::2] == ["", ""] and results[0].nfe == 0
    assert results[0].no_speech_prob > 0.6 > results[1].no_speech_prob and results[1].nfe >= 1
    kept = transcribe_batch(whisper_model, [silence], TranscribeOptions(steps=4, no_speech_threshold=None))[0]
    assert kept.no_speech_prob is None and kept.nfe >= 1


def test_non_speech_tokens_are_the_checkpoints_own_suppress_list(whisper_model):
    """The installed CTranslate2 checkpoint lists the ids Whisper suppresses (from its
    generation config); ours are derived from the tokenizer and must be the same text tokens."""
    from dllm_asr.model.encoders import resolve_short_name

    config = json.loads((resolve_short_name("whisper-tiny.en") / "config.json").read_text())
    tokenizer = whisper_model.tokenizer
    assert set(tokenizer.non_speech_ids()) == {i for i in config["suppress_ids"] if i < tokenizer.eot}
    assert config["suppress_ids_begin"] == [tokenizer.blank, tokenizer.eot]


def _boost(decoder, token: int, amount: float):
    original = decoder.logits

    def boosted(hidden):
        logits = original(hidden)
        logits[..., token] += amount
        return logits
    return boosted


def test_decoding_never_writes_a_non_speech_symbol(whisper_model, example, monkeypatch):
    expected = whisper_model.generate_ar([example], 30)[0]
    bracket = whisper_model.tokenizer.encode(" [")[0]
    monkeypatch.setattr(whisper_model.base_decoder, "logits", _boost(whisper_model.base_decoder, bracket, 50.0))
    monkeypatch.setattr(whisper_model.decoder, "logits", _boost(whisper_model.decoder, bracket, 50.0))
    assert whisper_model.generate_ar([example], 30)[0] == expected
    diffusion = transcribe_batch(whisper_model, [example], TranscribeOptions(strategy="diffusion", steps=4))[0]
    assert bracket not in diffusion.tokens and diffusion.nfe >= 1


@pytest.mark.parametrize("text, low, high", [("the the the the the the the the the the the the", 3.0, 9.0),
                                             ("Please check the number and dial again.", 0.7, 1.3), ("", 0.0, 0.0)])
def test_compression_ratio_flags_loops(text, low, high):
    assert low <= compression_ratio(text) <= high


def _samples(texts, logprobs, no_speech, lengths):
    tokens = [[7] * n for n in lengths]
    lookup = {id(row): text for row, text in zip(tokens, texts)}
    return ARSamples.scored(tokens, logprobs, no_speech, lambda row: lookup[id(row)], nfe=3,
                            token_probs=[[0.5] * n for n in lengths])


def test_fallback_rule_is_whispers():
    loop = "so so so so so so so so so so so so so so so so"
    samples = _samples(["Activated.", loop, "You", "You"], [-1.0, -0.5, -9.0, -9.0], [0.1, 0.1, 0.1, 0.9], [3, 16, 2, 2])
    # avg log-prob = sum / (tokens + 1): -0.25 passes; a loop fails on its ratio; -3 fails, unless silence.
    assert [samples.needs_fallback(i) for i in range(4)] == [False, True, True, False]


def test_best_of_takes_the_likeliest_per_token_and_keep_better_prefers_passing():
    tried = _samples(["a b", "a b c", "x", "y"], [-4.0, -3.0, -0.1, -0.4], [0.0] * 4, [4, 3, 1, 1])
    picked = tried.best_of(2)  # group 1: -1.0 vs -1.0 per token -> first; group 2: -0.1 -> "x"
    assert picked.tokens == [[7] * 4, [7]] and picked.logprobs == [-4.0, -0.1] and picked.nfe == 3
    loop = "no no no no no no no no no no no no no no no"
    current = _samples([loop, "z", "w"], [-0.1, -9.0, -0.2], [0.0] * 3, [15, 2, 1])
    candidates = _samples(["ok", "q", "v"], [-9.0, -3.0, -9.0], [0.0] * 3, [2, 2, 1])
    current.keep_better([0, 1, 2], candidates)
    # 0: both fail, the candidate is under the compression limit; 1: both fail, the candidate is
    # likelier; 2: neither condition, the current one stays.
    assert current.logprobs == [-9.0, -3.0, -0.2]


def test_temperature_fallback_redecodes_only_failing_rows_and_is_repeatable(whisper_model, example, monkeypatch):
    clean = whisper_model.generate_ar([example], 24, fallback=False)
    assert whisper_model.generate_ar([example], 24).nfe == clean.nfe  # nothing to retry
    the = whisper_model.tokenizer.encode(" the")[0]
    boosted = _boost(whisper_model.base_decoder, the, 12.0)
    unboosted = whisper_model.base_decoder.logits
    # The greedy pass (one row) loops on " the"; the sampled passes (best-of-5 rows) see the real model.
    monkeypatch.setattr(whisper_model.base_decoder, "logits",
                        lambda hidden: boosted(hidden) if hidden.shape[0] == 1 else unboosted(hidden))
    looped = whisper_model.generate_ar([example], 24, fallback=False)
    assert looped[0] == [the] * 24 and looped.nfe == 24
    retried = whisper_model.generate_ar([example], 24)
    text = whisper_model.tokenizer.decode(retried[0])
    assert retried.nfe > looped.nfe and compression_ratio(text) < 2.4
    assert normalize_text(text) == normalize_text((ASSETS / "example.txt").read_text())
    assert whisper_model.generate_ar([example], 24) == retried


def test_a_single_bfloat16_query_on_a_cpu_is_attended_written_out_and_agrees_with_float64(monkeypatch):
    """The decoder's attention: the fused kernel, except for a single query (an AR step) in
    bfloat16 on a CPU, where the fused kernel is slow: written out there (float32 softmax); both
    agree with a float64 reference, and a masked key gets no weight."""
    import torch.nn.functional as F
    from dllm_asr.model.decoders import whisper

    generator = torch.Generator().manual_seed(0)
    queries, keys, values = (torch.randn(2, 6, length, 64, generator=generator) for length in (1, 50, 50))
    mask = torch.ones(2, 1, 1, 50, dtype=torch.bool)
    mask[1, ..., 30:] = False
    expected = F.scaled_dot_product_attention(queries.double(), keys.double(), values.double(), attn_mask=mask)
    torch.testing.assert_close(whisper._attention(queries, keys, values, mask).double(), expected, rtol=0, atol=1e-5)
    weights = []
    kept = whisper._attention(queries, keys, values, mask, weights)  # written out, to keep the weights
    torch.testing.assert_close(kept.double(), expected, rtol=0, atol=1e-5)
    assert weights[0].shape == (2, 6, 1, 50) and weights[0].dtype == torch.float32
    assert torch.all(weights[0][1, ..., 30:] == 0)
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: pytest.fail("fused kernel used in bf16"))
    low = whisper._attention(queries.bfloat16(), keys.bfloat16(), values.bfloat16(), mask)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.double(), expected, rtol=0, atol=3e-2)
