
import pytest
import torch
from peft.tuners.lora import LoraLayer

from dllm_asr.model.loading import build_model
from dllm_asr.training.objectives import forward_mask, masked_diffusion_loss
from dllm_asr.training.objectives import encode_transcripts, transcript_and_eos


def test_forward_shapes_and_lora_count(tiny_model, real_clips):
    feats, lengths = tiny_model.features(real_clips[:2])
    tokens = torch.full((2, 10), tiny_model.mask_id)
    logits = tiny_model(feats, lengths, tokens)
    assert logits.shape == (2, 10, tiny_model.decoder.vocab_size)
    adapted = sum(isinstance(m, LoraLayer) for m in tiny_model.decoder.modules())
    assert adapted == 3 * tiny_model.decoder.num_layers


def test_prompt_uses_chat_template(tiny_model):
    text = tiny_model.tokenizer.decode(tiny_model.prompt_ids)
    assert "Transcribe the audio." in text and "assistant" in text


def test_row_logits_do_not_depend_on_the_rest_of_the_batch(tiny_model, real_clips):
    tokens = torch.randint(0, 1000, (1, 12))
    alone = tiny_model.response_logits(tiny_model.encode_audio(real_clips[1:2]), tokens)
    audio = tiny_model.encode_audio([real_clips[0], real_clips[1], real_clips[2]])
    others = torch.cat([torch.randint(0, 1000, (1, 12)), tokens, torch.randint(0, 1000, (1, 12))])
    lengths = torch.tensor([12, 12, 7])
    batched = tiny_model.response_logits(audio, others, lengths)
    torch.testing.assert_close(batched[1], alone[0], atol=1e-4, rtol=1e-4)


def test_ar_loss_scores_the_transcript_and_its_first_eos_only():
    ids = torch.tensor([[5, 6, 0, 0], [7, 0, 0, 0]])  # 0 = EOS padding
    valid = transcript_and_eos(ids, torch.tensor([2, 1]))
    assert valid.tolist() == [[True, True, True, False], [True, True, False, False]]


@pytest.mark.slow
def test_tiny_model_overfits_four_utterances(tiny_config, real_clips):
    torch.manual_seed(0)
    model = build_model(tiny_config)
    texts = ["the quick brown fox", "a lazy dog", "river bank near", "jumps over"]
    feats, feat_lengths = model.features(real_clips)
    ids, _ = encode_transcripts(model.tokenizer, texts, model.eos_id)
    valid = torch.ones_like(ids, dtype=torch.bool)
    # The whole tiny decoder trains (its random base cannot be steered by LoRA alone).
    trainable = [p for n, p in model.named_parameters() if not n.startswith(("encoder.", "ctc_head."))]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=3e-3, weight_decay=0.0)

    def fixed_loss() -> float:
        with torch.no_grad():
            batch = forward_mask(ids, valid, model.mask_id, full_mask_fraction=1.0,
                                 generator=torch.Generator().manual_seed(123))
            return masked_diffusion_loss(model(feats, feat_lengths, batch.noisy), ids, batch, valid, "none").item()

    model.train()
    before = fixed_loss()
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        batch = forward_mask(ids, valid, model.mask_id, generator=gen)
        loss = masked_diffusion_loss(model(feats, feat_lengths, batch.noisy), ids, batch, valid)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    after = fixed_loss()
    assert after < before / 10, (before, after)


@pytest.mark.parametrize("kind", ["llada", "hf"])
def test_num_logits_equals_slicing_the_full_logits(kind, tmp_path):
    from dllm_asr.model.decoders import load_decoder
    from tests.tiny_checkpoints import write_tiny_llada_checkpoint, write_tiny_llama_checkpoint

    if kind == "llada":
        decoder = load_decoder("llada", write_tiny_llada_checkpoint(tmp_path / "m"), dtype=torch.float64)
    else:
        decoder = load_decoder("hf", write_tiny_llama_checkpoint(tmp_path / "m"), dtype=torch.float64)
    ids = torch.randint(0, 20, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, :3] = False
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)
    embeds = decoder.embed(ids)
    for causal in (False, True):
        full = decoder(embeds, mask, positions, causal=causal)
        torch.testing.assert_close(decoder(embeds, mask, positions, causal=causal, num_logits=4), full[:, -4:])


def test_decoder_slice_keeps_the_first_pretrained_layers(tiny_config, tmp_path):
    import dataclasses

    from dllm_asr.config import DecoderConfig

    full = build_model(tiny_config)
    sliced_config = dataclasses.replace(tiny_config, decoder=dataclasses.replace(tiny_config.decoder, num_layers=1))
    sliced = build_model(sliced_config)
    assert sliced.decoder.num_layers == 1
    kept = dict(sliced.decoder.named_parameters())
    for name, param in full.decoder.named_parameters():
        if name in kept:
            assert torch.equal(param, kept[name]), name
    assert not any(".blocks.1." in name for name in kept)
    bad = dataclasses.replace(tiny_config, decoder=DecoderConfig(**{**vars(tiny_config.decoder), "num_layers": 5}))
    with pytest.raises(ValueError, match="decoder.num_layers"):
        build_model(bad)


