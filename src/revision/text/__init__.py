"""Text embeddings (MiniLM, multilingual e5, centred e5) and tokenising (jieba for Chinese)."""

from revision.text.embed import (
    CachedEncoder,
    CenteredEncoder,
    E5Encoder,
    EmbeddingCache,
    MiniLMEncoder,
    TextEncoder,
    choose_encoder,
    encoder_names,
    get_text_encoder,
    reference_phrases,
    register_encoder,
)
from revision.text.tokenize import has_cjk, preprocess, remove_punctuation, strip_markers, tokenize

__all__ = [
    "CachedEncoder",
    "CenteredEncoder",
    "E5Encoder",
    "EmbeddingCache",
    "MiniLMEncoder",
    "TextEncoder",
    "choose_encoder",
    "encoder_names",
    "get_text_encoder",
    "has_cjk",
    "preprocess",
    "reference_phrases",
    "register_encoder",
    "remove_punctuation",
    "strip_markers",
    "tokenize",
]
