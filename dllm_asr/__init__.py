"""dllm-asr: speech recognition with masked-diffusion LLM decoders (Whisper-LLaDA, dLLM-ASR).

    import dllm_asr
    model = dllm_asr.load_model("path/to/checkpoint", device="cpu")
    audio = dllm_asr.load_audio("clip.wav")
    print(dllm_asr.transcribe_batch(model, [audio])[0].text)
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "build_model", "load_audio", "load_model", "transcribe_batch", "TranscribeOptions"]


def __getattr__(name: str):
    # Lazy, so `import dllm_asr` (and `dllm-asr --help`) stays fast and free of torch imports.
    if name in ("build_model", "load_model"):
        from . import loading

        return getattr(loading, name)
    if name == "load_audio":
        from .audio import load_audio

        return load_audio
    if name in ("transcribe_batch", "TranscribeOptions"):
        from . import transcribe

        return getattr(transcribe, name)
    raise AttributeError(f"module 'dllm_asr' has no attribute {name!r}")
