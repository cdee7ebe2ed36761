"""Text embeddings (MiniLM, multilingual e5, centred e5), tokenising (jieba for Chinese) and the
product-text vocabulary (materials, care phrases)."""

from revision.text.embed import (
    CachedEncoder,
    CenteredEncoder,
    E5Encoder,
    E5Model,
    EmbeddingCache,
    MemoEncoder,
    MiniLMEncoder,
    TextEncoder,
    choose_encoder,
    encoder_names,
    get_text_encoder,
    reference_phrases,
    register_encoder,
)
from revision.text.tokenize import has_cjk, preprocess, remove_punctuation, strip_markers, tokenize
from revision.text.vocabulary import parse_description

__all__ = [
    "CachedEncoder",
    "CenteredEncoder",
    "E5Encoder",
    "E5Model",
    "EmbeddingCache",
    "MemoEncoder",
    "MiniLMEncoder",
    "TextEncoder",
    "choose_encoder",
    "encoder_names",
    "get_text_encoder",
    "has_cjk",
    "parse_description",
    "preprocess",
    "reference_phrases",
    "register_encoder",
    "remove_punctuation",
    "strip_markers",
    "tokenize",
]
