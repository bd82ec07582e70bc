"""Generation: prefill/decode engine, the per-row modality state machine, detokenizer routing and writers."""
from chameleon_lite.generate.document import Document, Span
from chameleon_lite.generate.engine import GenerationConfig, Generator, Prompt, SamplingSettings, StreamEvent

__all__ = ["Document", "GenerationConfig", "Generator", "Prompt", "SamplingSettings", "Span", "StreamEvent"]
