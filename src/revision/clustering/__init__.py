"""The paper's two-level clustering of mined actions, the ontology, incremental updates and the
tool list (§III-B(b), §IV-A). Start with `HierarchicalClusterer` and `load_ontology`."""

from revision.clustering._base import ClusterNamer, ClusterSummary, KeywordNamer, ctfidf_keywords
from revision.clustering.dbscan import IncrementalDBSCAN, dbscan, radius_graph
from revision.clustering.hierarchy import Assignment, AuxCluster, HierarchicalClusterer
from revision.clustering.llm import LLMNamer
from revision.clustering.ontology import (
    OTHER,
    MainCategory,
    Ontology,
    Subcategory,
    default_ontology_path,
    load_ontology,
    parse_ontology,
)
from revision.clustering.propose import propose_ontology, write_proposal
from revision.clustering.report import render_report, write_report
from revision.clustering.runner import RunResult, run_clustering, update_tool_list
from revision.clustering.scores import KeywordMatcher, combine, synonym_score, token_matches
from revision.clustering.store import ActionSource, read_source
from revision.clustering.toollist import (
    ToolSpec,
    build_tool_list,
    load_tool_list,
    save_tool_list,
    tool_key,
)

__all__ = [
    "OTHER",
    "ActionSource",
    "Assignment",
    "AuxCluster",
    "ClusterNamer",
    "ClusterSummary",
    "HierarchicalClusterer",
    "IncrementalDBSCAN",
    "KeywordMatcher",
    "KeywordNamer",
    "LLMNamer",
    "MainCategory",
    "Ontology",
    "RunResult",
    "Subcategory",
    "ToolSpec",
    "build_tool_list",
    "combine",
    "ctfidf_keywords",
    "dbscan",
    "default_ontology_path",
    "load_ontology",
    "load_tool_list",
    "parse_ontology",
    "propose_ontology",
    "radius_graph",
    "read_source",
    "render_report",
    "run_clustering",
    "save_tool_list",
    "synonym_score",
    "token_matches",
    "tool_key",
    "update_tool_list",
    "write_proposal",
    "write_report",
]
