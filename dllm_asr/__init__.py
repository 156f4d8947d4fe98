"""dllm-asr: speech recognition with masked-diffusion LLM decoders (Whisper-LLaDA, dLLM-ASR).

    import dllm_asr
    result = dllm_asr.transcribe("talk.mp3")            # the default model, loaded once
    print(result.text, result.segments[0].start)
    model = dllm_asr.load_model("path/to/checkpoint", device="cpu")
    print(model.transcribe("talk.mp3", strategy="ar").text)
    print(dllm_asr.transcribe_batch(model, [dllm_asr.load_audio("clip.wav")])[0].text)
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "build_model", "load_audio", "load_model", "transcribe", "transcribe_batch", "TranscribeOptions"]


def __getattr__(name: str):
    # Lazy, so `import dllm_asr` (and `dllm-asr --help`) stays fast and free of torch imports.
    if name in ("build_model", "load_model"):
        from dllm_asr.model import loading

        return getattr(loading, name)
    if name == "load_audio":
        from dllm_asr.audio.io import load_audio

        return load_audio
    if name in ("transcribe", "transcribe_batch"):
        from dllm_asr.transcription import long_form

        return getattr(long_form, name)
    if name == "TranscribeOptions":
        from dllm_asr.transcription.options import TranscribeOptions

        return TranscribeOptions
    raise AttributeError(f"module 'dllm_asr' has no attribute {name!r}")
