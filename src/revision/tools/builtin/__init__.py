"""The built-in components, registered through the `revision.tools` entry point like any
third-party plug-in (see `revision.tools._registry`)."""

from __future__ import annotations

from revision.tools.builtin.labeling import ProductLabeling
from revision.tools.builtin.metadata import MetadataDisplay
from revision.tools.builtin.preference import PreferenceQuestion, answer
from revision.tools.builtin.price import PriceSegmentation
from revision.tools.builtin.refinement import SearchRefinement
from revision.tools.builtin.summary import ResultSummary
from revision.tools.builtin.text_search import TextSearch
from revision.tools.builtin.variants import VariantExpansion

BUILTINS = (
    SearchRefinement,
    PriceSegmentation,
    VariantExpansion,
    TextSearch,
    ResultSummary,
    ProductLabeling,
    MetadataDisplay,
    PreferenceQuestion,
)


def register_tools(register) -> None:
    """Entry point `revision.tools:builtin`: register the eight built-in components."""
    for component in BUILTINS:
        register(component)


__all__ = [*(c.__name__ for c in BUILTINS), "BUILTINS", "answer", "register_tools"]
