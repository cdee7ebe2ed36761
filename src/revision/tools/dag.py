"""Plans and their DAGs: "(1) (3) (5)" → numbered tools → a validated dependency graph.

Paper §III-B(c): "the system dynamically constructs Directed Acyclic Graphs for chain execution
based on the planning list through automated configuration generation." Edges come from three
places: the search stages (a filter runs before a rank, a rank before display, display before
interaction), tools that rewrite the candidate list at the same stage (they run in plan order,
one after another), and dependencies declared by a component (`after`) or written in a plan
file (`after:`). Tools with no path between them run concurrently. Validation names the plan and
the tool: an unknown index, a cycle (with its edges and why each exists), a missing input.

A plan file (YAML) is either the planner's string with optional Info per tool, or explicit
steps (a component graph, as `ToolDag.to_yaml` writes it):

    plan: "(2) (6)"            # or: steps: [{tool: 2, info: cheaper}, {tool: 6, after: [2]}]
    info: {2: "cheaper, below 0.02"}
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from revision.errors import InputError
from revision.tools._base import EXCLUSIVE_STAGES, STAGE_ORDER, Component, ToolStage
from revision.tools._registry import Registry, ToolList, UnknownToolError, registry
from revision.tools.grammar import PlanError, format_indices, parse_indices
from revision.tools.info import parse_info


@dataclass(frozen=True)
class PlanStep:
    """One tool of a plan: its number in the tool list and what the plan says about it."""

    index: int
    component: str
    title: str = ""
    info: str = ""  # a mined signal's Info for this tool
    action: str = ""  # the signal's Action (its words may imply inputs)
    inputs: dict[str, Any] = field(default_factory=dict)  # explicit inputs (win over Info)
    after: tuple[int, ...] = ()  # explicit dependencies, by tool index
    defaults: dict[str, Any] = field(default_factory=dict)  # implied by the tool-list entry

    @property
    def label(self) -> str:
        return f"({self.index}) {self.title or self.component}"


@dataclass
class Plan:
    steps: list[PlanStep]
    source: str = ""

    @property
    def indices(self) -> list[int]:
        return [s.index for s in self.steps]

    def __str__(self) -> str:
        return format_indices(self.indices)


def resolve_plan(
    indices: list[int],
    tools: ToolList,
    *,
    info: dict[int, str] | None = None,
    inputs: dict[int, dict[str, Any]] | None = None,
    after: dict[int, list[int]] | None = None,
    actions: dict[int, str] | None = None,
    source: str = "",
    reg: Registry | None = None,
) -> Plan:
    """Bind each index to its tool-list entry and component."""
    reg = reg or registry()
    source = source or format_indices(indices)
    for mapping, what in (
        (info, "info"),
        (inputs, "inputs"),
        (after, "after"),
        (actions, "action"),
    ):
        stray = sorted(set(mapping or {}) - set(indices))
        if stray:
            raise PlanError(
                f"plan {source}: {what} given for tool(s) {', '.join(f'({i})' for i in stray)} "
                "that the plan does not use"
            )
    steps = []
    for i in indices:
        try:
            entry = tools.get(i)
            cls = entry.component_class(reg)
        except UnknownToolError as exc:
            raise PlanError(f"plan {source}: {exc}") from None
        steps.append(
            PlanStep(
                index=i,
                component=cls.name,
                title=entry.title,
                info=(info or {}).get(i, ""),
                action=(actions or {}).get(i, ""),
                inputs=dict((inputs or {}).get(i, {})),
                after=tuple((after or {}).get(i, ())),
                defaults=dict(entry.defaults),
            )
        )
    return Plan(steps, source)


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 2}


def _matches(word: str, keyword: str) -> bool:
    """Equal, or sharing a stem: a common prefix of at least 5 letters (or the whole shorter
    word of 4): "variants"~"variant", "summarise"~"summary", not "action"~"interaction"."""
    if word == keyword:
        return True
    short = min(len(word), len(keyword))
    common = next((i for i, (a, b) in enumerate(zip(word, keyword, strict=False)) if a != b), short)
    return short >= 4 and common >= min(short, 5)


def tool_for_action(action: str, tools: ToolList, reg: Registry | None = None) -> int:
    """The tool whose title and keywords share most words with a mined action ("Supplement
    cheaper products" -> Price range segmentation). A convenience for demos and hand-written
    plans; the clustering stage is what maps actions to tools at scale."""
    reg = reg or registry()
    words = _words(action)
    best, best_score = None, 0.0
    for e in tools.active():
        vocab = _words(e.title) | {w for k in e.keywords for w in _words(k)}
        if e.component in reg:
            cls = reg.get(e.component)
            vocab |= {w for k in cls.keywords for w in _words(k)} | _words(cls.name)
        score = sum(any(_matches(w, k) for k in vocab) for w in words)
        if e.title.lower() == action.strip().lower():
            score += 100
        if score > best_score:
            best, best_score = e.index, score
    if best is None:
        raise PlanError(
            f"no tool matches the action {action!r}; tools: "
            + ", ".join(f"({e.index}) {e.title}" for e in tools.active())
        )
    return best


def plan_from_signals(signals: list[str], tools: ToolList, reg: Registry | None = None) -> Plan:
    """A plan from mined "Action -> Info" signals, in their order; signals that map to the same
    tool pool their Info."""
    from revision.tools.info import parse_signal

    order: list[int] = []
    info: dict[int, list[str]] = {}
    actions: dict[int, list[str]] = {}
    for signal in signals:
        action, text = parse_signal(signal)
        if not action:
            raise PlanError(f"signal {signal!r} has no action; write it as 'Action -> Info'")
        index = tool_for_action(action, tools, reg)
        if index not in order:
            order.append(index)
        actions.setdefault(index, []).append(action)
        if text:
            info.setdefault(index, []).append(text)
    return resolve_plan(
        order,
        tools,
        info={i: "; ".join(v) for i, v in info.items()},
        actions={i: "; ".join(v) for i, v in actions.items()},
        source=" | ".join(signals),
        reg=reg,
    )


# -- plan files --------------------------------------------------------------------------------


class _StepModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tool: int | str
    component: str | None = None  # informative; checked against the tool list when given
    stage: str | None = None  # informative; checked against the component when given
    info: str = ""
    action: str = ""
    inputs: dict[str, Any] = {}
    after: list[int | str] = []


class _PlanModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = ""
    plan: str | None = None
    info: dict[int, str] = {}
    inputs: dict[int, dict[str, Any]] = {}
    steps: list[_StepModel] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> _PlanModel:
        if (self.plan is None) == (self.steps is None):
            raise ValueError("give either `plan:` (a string such as '(1) (3)') or `steps:`")
        if self.steps is not None and (self.info or self.inputs):
            raise ValueError("with `steps:`, put info and inputs inside each step")
        return self


def _tool_ref(ref: int | str, tools: ToolList, where: str) -> int:
    if isinstance(ref, int):
        return ref
    text = str(ref).strip()
    m = re.fullmatch(r"\(?\s*(\d+)\s*\)?", text)
    if m:
        return int(m.group(1))
    try:
        return tools.index_of(text)
    except UnknownToolError as exc:
        raise PlanError(f"{where}: {exc}") from None


def load_plan_file(path: str | Path, tools: ToolList, reg: Registry | None = None) -> Plan:
    """A plan from a YAML (or JSON) file; errors name the file and the key at fault."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text("utf-8"))
    except FileNotFoundError:
        raise PlanError(f"plan file {path} not found") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise PlanError(f"{path}: not a YAML plan ({exc})") from None
    if not isinstance(data, dict):
        raise PlanError(f"{path}: expected a mapping with `plan:` or `steps:`")
    try:
        doc = _PlanModel.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: "
            f"{e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise PlanError(f"{path}: {problems}") from None
    source = f"{path}"
    if doc.plan is not None:
        return resolve_plan(
            parse_indices(doc.plan),
            tools,
            info=doc.info,
            inputs=doc.inputs,
            source=source,
            reg=reg,
        )
    indices, info, inputs, after, actions = [], {}, {}, {}, {}
    for n, step in enumerate(doc.steps or []):
        where = f"{path}: steps[{n}]"
        idx = _tool_ref(step.tool, tools, where)
        if idx in indices:
            raise PlanError(f"{where}: tool ({idx}) appears twice")
        indices.append(idx)
        info[idx] = step.info
        actions[idx] = step.action
        inputs[idx] = step.inputs
        after[idx] = [_tool_ref(a, tools, f"{where}.after") for a in step.after]
    plan = resolve_plan(
        indices,
        tools,
        info=info,
        inputs=inputs,
        after=after,
        actions=actions,
        source=source,
        reg=reg,
    )
    for n, (step, model) in enumerate(zip(plan.steps, doc.steps or [], strict=True)):
        reg_ = reg or registry()
        if model.component and model.component != step.component:
            raise PlanError(
                f"{path}: steps[{n}].component: tool ({step.index}) is bound to "
                f"{step.component!r}, not {model.component!r}"
            )
        stage = str(reg_.get(step.component).stage)
        if model.stage and model.stage != stage:
            raise PlanError(
                f"{path}: steps[{n}].stage: {step.component} runs at {stage}, not {model.stage}"
            )
    return plan


def load_plan(
    spec: str | Path,
    tools: ToolList,
    *,
    info: dict[int, str] | None = None,
    reg: Registry | None = None,
) -> Plan:
    """A plan from a string such as "(1) (3) (5)" or from a YAML file path."""
    text = str(spec)
    path = Path(text)
    if text.endswith((".yaml", ".yml", ".json")) or (len(text) < 4096 and path.is_file()):
        plan = load_plan_file(path, tools, reg)
        if info:
            known = set(plan.indices)
            stray = sorted(set(info) - known)
            if stray:
                raise PlanError(f"info given for tool(s) {stray} that {path} does not use")
            plan = Plan(
                [PlanStep(**{**s.__dict__, "info": info.get(s.index, s.info)}) for s in plan.steps],
                plan.source,
            )
        return plan
    return resolve_plan(parse_indices(text), tools, info=info, reg=reg)


# -- the DAG -------------------------------------------------------------------------------------


class ToolDag:
    """The validated graph of a plan. Nodes are tool indices; edge attribute `why`."""

    def __init__(self, plan: Plan, reg: Registry | None = None, *, check_inputs: bool = True):
        self.plan = plan
        self.registry = reg or registry()
        g = nx.DiGraph()
        self.steps = {s.index: s for s in plan.steps}
        self.position = {s.index: n for n, s in enumerate(plan.steps)}
        self.components: dict[int, type[Component]] = {}
        for step in plan.steps:
            try:
                cls = self.registry.get(step.component)
            except UnknownToolError as exc:
                raise PlanError(f"plan {plan.source or plan}: {exc}") from None
            self.components[step.index] = cls
            g.add_node(step.index, component=cls.name, stage=str(cls.stage), label=step.label)
        steps = plan.steps
        for a in steps:
            sa = self.components[a.index].stage
            for b in steps:
                if a is b:
                    continue
                sb = self.components[b.index].stage
                if STAGE_ORDER[sa] < STAGE_ORDER[sb]:
                    g.add_edge(a.index, b.index, why=f"stage order: {sa} before {sb}")
                elif (
                    sa == sb
                    and sa in EXCLUSIVE_STAGES
                    and self.position[a.index] < (self.position[b.index])
                ):
                    g.add_edge(a.index, b.index, why=f"plan order: both rewrite the {sa} list")
                if a.component in self.components[b.index].after:
                    g.add_edge(a.index, b.index, why=f"{b.component} declares after {a.component}")
        for b in steps:
            for a in b.after:
                if a not in self.steps:
                    raise PlanError(
                        f"plan {plan.source or plan}: tool ({b.index}) runs after ({a}), "
                        "which the plan does not use"
                    )
                if a == b.index:
                    raise PlanError(f"plan {plan.source or plan}: tool ({a}) runs after itself")
                if not g.has_edge(a, b.index):
                    g.add_edge(a, b.index, why="plan file: after")
        self.graph = g
        try:
            cycle = nx.find_cycle(g)
        except nx.NetworkXNoCycle:
            cycle = None
        if cycle:
            path = " → ".join(f"{self.steps[u].label} [{g.edges[u, v]['why']}]" for u, v in cycle)
            raise PlanError(
                f"plan {plan.source or plan} has a cycle: {path} → {self.steps[cycle[0][0]].label}"
            )
        if check_inputs:
            self._check_inputs()

    def _check_inputs(self) -> None:
        for step in self.plan.steps:
            cls = self.components[step.index]
            where = f"plan {self.plan.source or self.plan}: tool ({step.index}) "
            try:
                cls.validate_inputs(step.defaults, where=where)
                explicit = cls.validate_inputs(step.inputs, where=where)
            except InputError as exc:
                raise PlanError(str(exc)) from None
            given = {**step.defaults, **explicit}
            if step.info or step.action:
                given.update(cls().from_info(parse_info(step.info, context=step.action)))
            missing = sorted(cls.required_inputs() - set(given) - set(cls.extractable))
            if missing:
                raise PlanError(
                    f"{where}{step.title or cls.name}: missing input(s) {', '.join(missing)}: "
                    f"{cls.name} needs them and cannot read them from the query; give them in "
                    "the plan's info or inputs for this tool"
                )

    # -- views -----------------------------------------------------------------------------------
    def stage_of(self, index: int) -> ToolStage:
        return self.components[index].stage

    def generations(self, stage: ToolStage) -> list[list[PlanStep]]:
        """The plan's tools at `stage`, in waves: each wave's tools are mutually independent."""
        nodes = [n for n in self.graph if self.components[n].stage == stage]
        sub = self.graph.subgraph(nodes)
        return [
            sorted((self.steps[n] for n in gen), key=lambda s: self.position[s.index])
            for gen in nx.topological_generations(sub)
        ]

    def order(self) -> list[PlanStep]:
        """A topological order, plan order among ties."""
        order = nx.lexicographical_topological_sort(self.graph, key=lambda n: self.position[n])
        return [self.steps[n] for n in order]

    def reduced(self) -> nx.DiGraph:
        """The transitive reduction (what a picture should show), attributes kept."""
        red = nx.transitive_reduction(self.graph)
        red.add_nodes_from(self.graph.nodes(data=True))
        for u, v in red.edges:
            red.edges[u, v].update(self.graph.edges[u, v])
        return red

    def to_dict(self) -> dict[str, Any]:
        red = self.reduced()
        return {
            "plan": str(self.plan),
            "nodes": [
                {
                    "index": s.index,
                    "title": s.title,
                    "component": s.component,
                    "stage": str(self.stage_of(s.index)),
                    "info": s.info,
                    "inputs": s.inputs,
                }
                for s in self.plan.steps
            ],
            "edges": [{"from": u, "to": v, "why": d["why"]} for u, v, d in red.edges(data=True)],
            "waves": [
                [s.index for s in wave] for stage in ToolStage for wave in self.generations(stage)
            ],
        }

    def to_yaml(self) -> str:
        """The DAG as a plan file with explicit steps (loads back to the same DAG)."""
        red = self.reduced()
        steps = []
        for s in self.order():
            item: dict[str, Any] = {
                "tool": s.index,
                "component": s.component,
                "stage": str(self.stage_of(s.index)),
            }
            if s.action:
                item["action"] = s.action
            if s.info:
                item["info"] = s.info
            if s.inputs:
                item["inputs"] = s.inputs
            preds = sorted(red.predecessors(s.index), key=lambda n: self.position[n])
            if preds:
                item["after"] = preds
            steps.append(item)
        return yaml.safe_dump({"steps": steps}, sort_keys=False, allow_unicode=True)
