"""Expert rules: validation errors that name the rule and key, rendering, ordering."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from revision.errors import ConfigError
from revision.mining._base import CANONICAL_ACTIONS
from revision.mining.perception import FACTS
from revision.mining.rules import load_rules, parse_rules, render

GOOD = """
version: 1
max_signals: 2
rules:
  - name: cheap_results
    description: Result prices concentrate in the low range.
    when:
      - {fact: price.known, op: ">=", value: 3}
      - {fact: price.low_share, op: ">=", value: 0.6}
    action: Supplement premium products
    info: "price above {price.q75:.3g}"
    confidence: 0.7
  - name: colour
    when:
      - {fact: query.colour, op: exists}
    action: Refine search condition
    info: "colour: {query.colour|lower}"
    confidence: 0.9
    scale_by: query.colour_p
  - name: always
    when:
      - {fact: results.count, op: ">=", value: 1}
    action: Summarise results
    info: top results
    confidence: 0.1
"""


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as err:
        parse_rules(text, "my_rules.yaml")
    return str(err.value)


def test_shipped_rules_load_and_use_canonical_actions():
    loaded = load_rules()
    assert loaded.rules.rules and len(loaded.digest) == 64
    assert {r.action for r in loaded.rules.rules} <= set(CANONICAL_ACTIONS)


def test_rules_apply_orders_by_confidence_dedups_and_caps():
    rules = parse_rules(GOOD)
    facts = dict.fromkeys(FACTS)
    facts.update(
        {
            "price.known": 5,
            "price.low_share": 0.8,
            "price.q75": 0.0508,
            "query.colour": "Black",
            "query.colour_p": 0.5,
            "results.count": 10,
        }
    )
    fired = rules.apply(facts)
    assert [str(s) for _, s in fired] == [
        "Supplement premium products -> price above 0.0508",  # 0.7 beats 0.9 x 0.5
        "Refine search condition -> colour: black",
    ]
    assert [s.confidence for _, s in fired] == [0.7, 0.45]


def test_unknown_fact_names_the_rule_and_the_key():
    message = _error(GOOD.replace("price.low_share", "price.low_shar"))
    assert "my_rules.yaml" in message
    assert "rule 'cheap_results' (rules[0])" in message
    assert "when[1].fact" in message and "unknown fact 'price.low_shar'" in message
    assert "price.low_share" in message  # the valid names are listed


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (('op: ">=", value: 3', 'op: "~", value: 3'), "when[0].op"),
        (("value: 0.6", 'value: "high"'), "needs a numeric fact and value"),
        (("confidence: 0.7", "confidence: 1.5"), "confidence"),
        (("    confidence: 0.7\n", "    confidence: 0.7\n    weight: 2\n"), "weight: unknown key"),
        (("    action: Summarise results\n", ""), "rule 'always' (rules[2]), action: required"),
        (("{price.q75:.3g}", "{price.q75.__class__}"), "unknown fact"),
        (('"colour: {query.colour|lower}"', '"colour: {query.colour!r}"'), "bad placeholder"),
        (("scale_by: query.colour_p", "scale_by: query.colour"), "scale_by needs a numeric"),
        (("name: always", "name: colour"), "duplicate rule name 'colour'"),
        (("{fact: query.colour, op: exists}", "{fact: query.colour, op: in}"), "needs a value"),
    ],
)
def test_validation_errors_are_specific(change, expected):
    old, new = change
    assert old in GOOD
    assert expected in _error(GOOD.replace(old, new, 1))


def test_bad_yaml_and_bad_shape():
    assert "line" in _error("rules: [\n  - name: x\n   bad")
    assert "expected a mapping" in _error("- just a list")
    with pytest.raises(ConfigError, match="no such rules file"):
        load_rules("/nonexistent/rules.yaml")


def test_render_formats_and_refuses_missing_facts():
    facts = {"query.colour": "Dark Blue", "price.anchor": 0.0338813}
    assert render("colour: {query.colour|lower}", facts) == "colour: dark blue"
    assert render("price above {price.anchor:.3g}", facts) == "price above 0.0339"
    assert render("pattern: {query.pattern}", facts) is None


def test_cli_rules_command_reports_errors(tmp_path):
    from revision.cli.main import app

    bad = tmp_path / "rules.yaml"
    bad.write_text(GOOD.replace("price.known", "price.knwon"))
    result = CliRunner().invoke(app, ["mine", "rules", str(bad)])
    assert isinstance(result.exception, ConfigError)
    assert "rule 'cheap_results'" in str(result.exception)
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    result = CliRunner().invoke(app, ["mine", "rules", str(good), "--json"])
    assert result.exit_code == 0, result.output
    assert '"name": "cheap_results"' in result.stdout
