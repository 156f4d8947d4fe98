"""End to end on real synthetic speech: corpus -> train (demo-cpu recipe) -> decode -> WER."""

import shutil

import pytest

from dllm_asr.cli import main
from dllm_asr.evaluation.evaluate import evaluate_model
from dllm_asr.model.loading import build_model, load_model
from dllm_asr.tools.corpus import build_corpus
from dllm_asr.training.recipe import load_train_config, resolve_recipe
from dllm_asr.transcription.options import TranscribeOptions

SENTENCES = """The cat sat on the warm mat.
A red bird sings in the tall tree.
We walked to the old stone bridge.
She opened the window to let in the air.
The children played in the green park.
He drank a cup of hot black coffee.
Rain fell softly on the quiet town.
The farmer planted corn in the spring.
My brother reads a book every night.
The ship sailed across the wide sea.
They built a small house by the lake.
The dog barked at the passing car.
Snow covered the hills in the morning.
The baker sold fresh bread at noon.
Our teacher wrote a long letter home.
"""

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed (apt-get install espeak-ng)")


@pytest.mark.slow
def test_demo_recipe_learns_to_transcribe_its_training_set(tmp_path):
    text = tmp_path / "sentences.txt"
    text.write_text(SENTENCES)
    build_corpus(tmp_path / "corpus", num_utterances={"train": 12, "dev": 1, "test_seen": 1, "test_unseen": 1},
                 sources=(), text_files=[text], engines=("espeak-ng",), seed=0)
    train = str(tmp_path / "corpus" / "train.jsonl")
    overrides = [f"data.train={train}", f"output_dir={tmp_path / 'run'}"]
    options = TranscribeOptions(strategy="diffusion", steps=8)

    untrained = build_model(load_train_config(resolve_recipe("demo-cpu"), overrides).model)
    before = evaluate_model(untrained, train, options).wer
    assert main(["train", "--config", "demo-cpu", *overrides]) == 0
    after = evaluate_model(load_model(tmp_path / "run" / "checkpoints" / "last"), train, options).wer
    assert before > 0.9 and after < 0.2, (before, after)
