"""`tollgate check` reports every Rego, manifest, catalog and bundle problem at once, each at its file:line."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REGO, ROOT, TOLLGATE
from tollgate.authoring.check import PolicyCheckError, check_policy

#: The shipped capability manifests, counted (a literal goes stale as agents are added).
MANIFESTS = len(list((REGO / "agents").glob("*/data.yaml")))


def _write(root: Path, name: str, text: str) -> None:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(text)


def _problems(root: Path) -> list[str]:
    return [str(p) for p in check_policy([root]).problems]


def _library(tmp_path: Path, *, rego: bool = True) -> Path:
    """A copy of the default library (without its Rego when only the data matters, which is faster)."""
    root = tmp_path / "rego"
    if rego:
        shutil.copytree(REGO, root)
    else:
        for part in ("agents", "catalog"):
            shutil.copytree(REGO / part, root / part)
    return root


def _edit(root: Path, name: str, old: str, new: str) -> str:
    text = (root / name).read_text()
    assert old in text, f"{old!r} is no longer in {name}; update the test"
    (root / name).write_text(text.replace(old, new, 1))
    return text.replace(old, new, 1)


def _line(text: str, anchor: str, marker: str) -> int:
    """The 1-based line of the first `marker` at or after the first line holding `anchor`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if anchor in line)
    return next(i for i in range(start, len(lines)) if marker in lines[i]) + 1


# --- the default library ----------------------------------------------------------------------------------


def test_the_default_library_has_no_problems() -> None:
    report = check_policy([REGO])
    assert report.ok, "\n".join(map(str, report.problems))
    assert re.fullmatch(rf"check: \d+ modules, {MANIFESTS} manifests, 3 catalogs: no problems", report.summary())


# --- Rego ---------------------------------------------------------------------------------------------------


def test_a_syntax_error_does_not_hide_the_compile_errors_of_other_files(tmp_path: Path) -> None:
    _write(tmp_path, "a/a.rego", "package a\n\nallow if {\n")
    _write(tmp_path, "b/b.rego", "package b\n\nimport data.a\n\nx := no_such_function(1)\n")
    assert _problems(tmp_path) == [
        f"{tmp_path}/a/a.rego:4: rego_parse_error: unexpected eof token",
        f"{tmp_path}/b/b.rego:5: rego_type_error: undefined function no_such_function",
    ]


def test_a_package_nothing_references_is_compiled_too(tmp_path: Path) -> None:
    # The entrypoint evaluates fine; only compiling every module finds the broken one.
    _write(tmp_path, "tollgate/decision.rego", 'package tollgate\n\ndecision := {"decision": "allow"}\n')
    _write(tmp_path, "tollgate/orphan/orphan.rego", "package tollgate.orphan\n\nx := undefined_helper(1)\n")
    assert _problems(tmp_path) == [
        f"{tmp_path}/tollgate/orphan/orphan.rego:3: rego_type_error: undefined function undefined_helper",
    ]


def test_errors_an_earlier_compiler_stage_hides_are_reported_without_knock_on_errors(tmp_path: Path) -> None:
    # OPA stops at the first failing compiler stage: lib's undefined function hides app's unsafe variable and
    # types' type error. app also calls lib's function and reads its rules, which must not become errors.
    _write(tmp_path, "lib/lib.rego", """package lib

helper(x) := y if y := missing(x)

parts contains p if some p in input.parts

by_key[k] := 1 if some k in input.keys
""")
    _write(tmp_path, "app/app.rego", """package app

import data.lib

total := lib.helper(1) + 1

has_part if lib.parts["a"]

keyed if lib.by_key.k == 1

unsafe if { z }
""")
    _write(tmp_path, "types/types.rego", 'package types\n\nx if { 1 + "a" == 2 }\n')
    assert _problems(tmp_path) == [
        f"{tmp_path}/app/app.rego:11: rego_unsafe_var_error: var z is unsafe",
        f"{tmp_path}/lib/lib.rego:3: rego_type_error: undefined function missing",
        f"{tmp_path}/types/types.rego:3: rego_type_error: plus: invalid argument(s) "
        "have: (number, string, ???) want: (x: number, y: number, z: number)",
    ]


def test_more_errors_than_the_compilers_limit_of_ten_are_all_reported(tmp_path: Path) -> None:
    for i in range(12):
        _write(tmp_path, f"m/m{i:02}.rego", f"package m.m{i:02}\n\nx := f{i}(1)\n")
    assert _problems(tmp_path) == [
        f"{tmp_path}/m/m{i:02}.rego:3: rego_type_error: undefined function f{i}" for i in range(12)
    ]


def test_a_module_with_more_than_ten_errors_says_more_may_follow(tmp_path: Path) -> None:
    _write(tmp_path, "big.rego", "package big\n\n" + "".join(f"x{i} := f{i}(1)\n" for i in range(12)))
    problems = _problems(tmp_path)
    assert len(problems) == 11
    assert problems[-1] == (f"{tmp_path}/big.rego:12: more errors may follow: OPA stops at ten per compilation; "
                            "fix these and check again")


REGO_CASES = {
    "unsafe-variable": ({"p.rego": "package p\n\nx if { y }\n"}, "p.rego", 3, "var y is unsafe"),
    "type-error": ({"p.rego": 'package p\n\nx if { count(1) > "a" }\n'}, "p.rego", 3, "rego_type_error: count"),
    "multiple-default-rules": ({"p.rego": "package p\n\ndefault x := 1\n\ndefault x := 2\n"}, "p.rego", 1,
                               "multiple default rules data.p.x found at p.rego:3, p.rego:5"),
    "function-and-rule-with-one-name": ({"p.rego": "package p\n\nf(x) := 1\n\nf := 2\n"}, "p.rego", 3,
                                        "conflicting rules data.p.f found"),
    "rule-and-package-with-one-name": ({"p.rego": "package p\n\nq := 1\n", "q.rego": "package p.q\n\nr := 1\n"},
                                       "p.rego", 3, "rule data.p.q conflicts with: rule data.p.q.r at q.rego:3"),
    "recursion": ({"p.rego": "package p\n\nx if y\n\ny if x\n"}, "p.rego", 3, "rule data.p.x is recursive"),
    "input-shadowed": ({"p.rego": "package p\n\nx if { input := 1; input == 1 }\n"}, "p.rego", 3,
                       "variables must not shadow input"),
    "undefined-function-in-another-package": (
        {"p.rego": "package p\n\nimport data.q\n\nx := q.nothing(1)\n", "q.rego": "package q\n\ny := 1\n"},
        "p.rego", 5, "undefined function data.q.nothing"),
    "import-of-an-unknown-package": (
        {"p.rego": "package p\n\nimport data.nowhere\n\nx := 1\n"}, "p.rego", 3,
        "import data.nowhere: no package, rule or data in the bundle defines data.nowhere"),
    "undefined-rule-in-another-package": (
        {"p.rego": "package p\n\nimport data.q\n\nx if q.alow\n", "q.rego": "package q\n\nallow := true\n"},
        "p.rego", 5, "undefined reference data.q.alow: package q has no rule alow"),
    "undefined-rule-by-full-path": (
        {"p.rego": "package p\n\n# data.q.alow in a comment is not a reference\nx if data.q.alow\n",
         "q.rego": "package q\n\nallow := true\n"},
        "p.rego", 4, "undefined reference data.q.alow: package q has no rule alow"),
    "rego-v0-syntax": ({"p.rego": "package p\n\ndeny[msg] { msg := 1 }\n"}, "p.rego", 3,
                       "rego_parse_error: `if` keyword is required before rule body (hint: this is Rego v0 syntax"),
    "keyword-as-rule-name": ({"p.rego": "package p\n\ncontains(a, b) := 1\n"}, "p.rego", 3,
                             "contains keyword cannot be used for rule name (hint: this is Rego v0 syntax"),
    "builtin-removed-in-v1": ({"p.rego": 'package p\n\nx if re_match("a", "a")\n'}, "p.rego", 3,
                              "deprecated built-in function calls in expression: re_match (hint: Rego v1 removed"),
}


def test_a_reference_a_with_mocks_is_defined_only_where_it_is_mocked(tmp_path: Path) -> None:
    _write(tmp_path, "q/q.rego", "package q\n\nallow := true\n")
    _write(tmp_path, "q/q_test.rego", """package q_test

import data.q

test_mocked if q.extra with data.q.extra as true

test_not_mocked if q.extra
""")
    assert _problems(tmp_path) == [
        f"{tmp_path}/q/q_test.rego:7: undefined reference data.q.extra: package q has no rule extra "
        "(hint: check the name; OPA evaluates it as undefined, without an error)",
    ]


@pytest.mark.parametrize(("files", "file", "line", "fragment"), REGO_CASES.values(), ids=REGO_CASES.keys())
def test_rego_problems_are_reported_at_their_line(
    tmp_path: Path, files: dict[str, str], file: str, line: int, fragment: str
) -> None:
    for name, text in files.items():
        _write(tmp_path, name, text)
    at = f"{tmp_path}/{file}:{line}: "
    problems = _problems(tmp_path)
    assert any(p.startswith(at) and fragment in p for p in problems), problems


# --- manifests and catalogs -----------------------------------------------------------------------------

MANIFEST = "agents/code-reviewer/data.yaml"
TOOLS, MODELS, DATABASES = "catalog/tools/data.yaml", "catalog/models/data.yaml", "catalog/databases/data.yaml"

# file, old text, new text, (anchor, marker) of the expected line, expected message
YAML_CASES = {
    "manifest-unknown-key": (MANIFEST, "owner_team: platform\n", "owner_team: platform\ncolour: blue\n",
                             ("colour:", "colour:"), 'unknown key "colour" (allowed: approval, budget,'),
    "manifest-missing-key": (MANIFEST, "owner_team: platform\n", "", ("description:", "description:"),
                             'missing required key "owner_team"'),
    "manifest-wrong-type": (MANIFEST, "max_output_tokens: 8000", 'max_output_tokens: "lots"',
                            ("max_output_tokens", "max_output_tokens"),
                            'max_output_tokens: expected an integer, got string "lots"'),
    "manifest-list-not-a-list": (MANIFEST, "data_classes: [public, internal, source-code]", "data_classes: public",
                                 ("data_classes: public", "data_classes"), "expected a list, got string"),
    "manifest-tool-not-in-catalog": (MANIFEST, "  - Bash\n", "  - Bash\n  - github/force_push\n",
                                     ("github/force_push", "github/force_push"),
                                     'tools[17]: "github/force_push" is not in the tool catalog'),
    "manifest-tool-listed-twice": (MANIFEST, "  - Bash\n", "  - Bash\n  - Read\n", ("  - Bash", "  - Read"),
                                   'tools[17]: "Read" is listed twice'),
    "manifest-model-not-in-catalog": (MANIFEST, "  anthropic/claude-haiku-4-5:", "  openai/gpt-5:",
                                      ("openai/gpt-5", "openai/gpt-5"),
                                      'models: "openai/gpt-5" is not in the model catalog'),
    "manifest-negative-limit": (MANIFEST, "      usd: 400", "      usd: -400", ("usd: -400", "usd"),
                                "budget.limits.agent.usd: must be at least 0, got -400"),
    "manifest-unknown-limit-scope": (MANIFEST, "    agent:\n      usd: 400", "    month:\n      usd: 400",
                                     ("month:", "month:"),
                                     'budget.limits: "month" is not one of session, agent, team, workflow'),
    "manifest-zero-token-cap": (MANIFEST, "max_output_tokens: 8000", "max_output_tokens: 0",
                                ("max_output_tokens", "max_output_tokens"), "must be at least 1, got 0"),
    "manifest-relative-workspace": (MANIFEST, "workspace: /workspace", "workspace: workspace",
                                    ("workspace:", "workspace:"), 'is not an absolute path'),
    "manifest-no-approvers": (MANIFEST, "  approvers: [group:platform-leads]", "  approvers: []",
                              ("approvers:", "approvers:"), "approval.approvers: must not be empty"),
    "manifest-quorum-too-large": (MANIFEST, "  ttl_seconds: 3600", "  ttl_seconds: 3600\n  required: 11",
                                  ("required:", "required:"), "approval.required: must be at most 10, got 11"),
    "manifest-allow-requester-not-boolean": (MANIFEST, "  ttl_seconds: 3600",
                                             "  ttl_seconds: 3600\n  allow_requester: yes please",
                                             ("allow_requester:", "allow_requester:"),
                                             'approval.allow_requester: expected true or false, got string'),
    "manifest-duplicate-key": (MANIFEST, "owner_team: platform\n", "owner_team: platform\nowner_team: infra\n",
                               ("owner_team: infra", "owner_team"), 'duplicate key "owner_team"'),
    "manifest-yaml-syntax": (MANIFEST, "owner_team: platform\n", "owner_team: platform: infra\n",
                             ("owner_team", "owner_team"), "does not parse: mapping values are not allowed here"),
    "tool-unknown-effect": (TOOLS, "effect: destructive", "effect: obliterate", ("obliterate", "obliterate"),
                            'github/merge_pull_request.effect: "obliterate" is not one of read, write, destructive'),
    "tool-missing-effect": (TOOLS, "  description: Post a message to a channel.\n  effect: write\n",
                            "  description: Post a message to a channel.\n", ("slack/post_message:", "slack"),
                            'slack/post_message: missing required key "effect"'),
    "tool-unknown-argument-kind": (TOOLS, "    kind: shell", "    kind: grpc", ("kind: grpc", "kind"),
                                   'Bash.arguments.kind: "grpc" is not one of filesystem, sql, browser, shell'),
    "tool-argument-key-of-another-kind": (TOOLS, "    command_argument: command", "    statement_argument: command",
                                          ("statement_argument: command", "statement_argument"),
                                          'Bash.arguments: unknown key "statement_argument"'),
    "tool-sql-two-targets": (TOOLS, "    database: analytics-replica",
                             "    database: analytics-replica\n    database_argument: db",
                             ("warehouse/run_query:", "arguments:"),
                             "warehouse/run_query.arguments: needs exactly one of database_argument, database"),
    "tool-sql-unknown-database": (TOOLS, "    database: analytics-replica", "    database: analytics-replicaa",
                                  ("analytics-replicaa", "analytics-replicaa"),
                                  '"analytics-replicaa" is not in the database catalog'),
    "model-id-mismatch": (MODELS, "  model: claude-opus-4-1", "  model: claude-opus-4",
                          ("anthropic/claude-opus-4-1:", "anthropic"),
                          'anthropic/claude-opus-4-1: the id must be <provider>/<model>, '
                          'here "anthropic/claude-opus-4"'),
    "model-unknown-hosting": (MODELS, "hosting: internal", "hosting: on-prem", ("on-prem", "on-prem"),
                              'internal/llama-3.3-70b.hosting: "on-prem" is not one of external, internal'),
    "database-unknown-role": (DATABASES, "role: primary", "role: leader", ("leader", "leader"),
                              'analytics-primary.role: "leader" is not one of replica, primary'),
}


@pytest.mark.parametrize(("file", "old", "new", "where", "fragment"), YAML_CASES.values(), ids=YAML_CASES.keys())
def test_manifest_and_catalog_problems_are_reported_at_their_yaml_line(
    tmp_path: Path, file: str, old: str, new: str, where: tuple[str, str], fragment: str
) -> None:
    root = _library(tmp_path, rego=False)
    text = _edit(root, file, old, new)
    at = f"{root}/{file}:{_line(text, *where)}: "
    problems = _problems(root)
    assert any(p.startswith(at) and fragment in p for p in problems), problems


def test_the_data_only_library_copy_is_clean(tmp_path: Path) -> None:
    # The YAML cases above each break one thing in this copy.
    assert _problems(_library(tmp_path, rego=False)) == []


def test_other_data_files_are_not_checked_against_a_schema(tmp_path: Path) -> None:
    root = _library(tmp_path, rego=False)
    _write(root, "tollgate/fixtures/data.yaml", "anything: [1, 2]\n")
    _write(root, "settings/data.json", '{"colour": "blue"}\n')
    assert _problems(root) == []


# --- bundle rules -------------------------------------------------------------------------------------------

BUNDLE_CASES = {
    "data-defined-twice": ("data.json", '{"catalog": {"databases": {"billing-primary": {"role": "replica"}}}}',
                           "data.json:1: data at catalog/databases/billing-primary/role is defined twice"),
    "data-outside-roots": (".manifest", '{"revision": "r1",\n "roots": ["tollgate", "agents"]}',
                           ".manifest:2: data path 'catalog' is outside the manifest roots ['tollgate', 'agents'] "
                           "(hint: check .manifest)"),
    "overlapping-roots": (".manifest", '{"roots": ["tollgate", "tollgate/tools"]}',
                          ".manifest:1: manifest roots overlap: 'tollgate' and 'tollgate/tools' "
                          "(hint: check .manifest)"),
}


@pytest.mark.parametrize(("name", "content", "expected"), BUNDLE_CASES.values(), ids=BUNDLE_CASES.keys())
def test_the_loaders_bundle_rules_are_reported_with_their_hint(
    tmp_path: Path, name: str, content: str, expected: str
) -> None:
    root = _library(tmp_path, rego=False)
    _write(root, name, content)
    problems = _problems(root)
    assert any(p.startswith(f"{root}/{expected}") for p in problems), problems


def test_a_path_that_is_not_a_directory_cannot_be_checked(tmp_path: Path) -> None:
    with pytest.raises(PolicyCheckError, match="not a directory"):
        check_policy([tmp_path / "missing"])


# --- the command --------------------------------------------------------------------------------------------


def _tollgate(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TOLLGATE, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_the_command_prints_every_problem_relative_to_the_working_directory_sorted(tmp_path: Path) -> None:
    root = _library(tmp_path)
    _edit(root, MANIFEST, "  - Bash\n", "  - Bash\n  - github/force_push\n")
    _edit(root, "tollgate/rules/tools/tools.rego", "_valid_effect if entry.effect in _effects",
          "_valid_effect if entry.effect in _efects")
    _write(root, "tollgate/extra/extra.rego", "package tollgate.extra\n\nallow if {\n")
    result = _tollgate("check", "rego", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == [
        "rego/agents/code-reviewer/data.yaml", "rego/tollgate/extra/extra.rego", "rego/tollgate/rules/tools/tools.rego",
    ]
    assert lines[2].startswith("rego/tollgate/rules/tools/tools.rego:")
    assert "var _efects is unsafe" in lines[2]
    assert re.fullmatch(rf"check: \d+ modules, {MANIFESTS} manifests, 3 catalogs: 3 problems", lines[-1])


def test_the_command_checks_rego_by_default_and_exits_zero_when_clean() -> None:
    result = _tollgate("check", cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.fullmatch(rf"check: \d+ modules, {MANIFESTS} manifests, 3 catalogs: no problems\n", result.stdout)


def test_the_command_fails_on_a_missing_directory(tmp_path: Path) -> None:
    result = _tollgate("check", "nowhere", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("tollgate check: nowhere: not a directory")


# The mistakes the README's example output comes from.
README_MISTAKES = [
    (MANIFEST, "  - github/create_pull_request", "  - github/create_pul_request"),
    (TOOLS, "effect: destructive", "effect: delete"),
    ("tollgate/rules/models/models.rego", '"message": sprintf("model %q is not in the model catalog"',
     '"message": sprint("model %q is not in the model catalog"'),
    ("tollgate/rules/secrets/secrets.rego", "\ttools.permitted\n\tmay_hold_credential",
     "\ttools.permited\n\tmay_hold_credential"),
]


def test_the_readme_examples_print_what_the_readme_shows(tmp_path: Path) -> None:
    section = (ROOT / "README.md").read_text().split("### Checking policy", 1)[1].split("\n## ", 1)[0]
    console, example = re.findall(r"```(?:console)?\n(.*?)```", section, re.S)[:2]
    command, *shown = console.splitlines()
    assert command == "$ .venv/bin/tollgate check rego"
    clean = _tollgate("check", "rego", cwd=ROOT)
    assert clean.returncode == 0
    assert _digits(clean.stdout.splitlines()) == _digits(shown)

    root = _library(tmp_path)
    for name, old, new in README_MISTAKES:
        _edit(root, name, old, new)
    broken = _tollgate("check", "rego", cwd=tmp_path)
    assert broken.returncode == 1
    # Line numbers and counts move as the library grows; the messages must not.
    assert _digits(broken.stdout.splitlines()) == _digits(example.splitlines())


def _digits(lines: list[str]) -> list[str]:
    return [re.sub(r"\d+", "N", line) for line in lines]


# --- rules no entrypoint reaches --------------------------------------------------------------------------

JIRA = """# METADATA
# title: Jira
package tollgate.jira

deny contains {"code": "jira_closed", "message": "agents do not close tickets"} if {
\tinput.kind == "tool"
\tinput.tool.name == "close_issue"
}
"""


def test_a_rule_package_outside_the_prefix_is_refused_as_the_readme_shows(tmp_path: Path) -> None:
    root = _library(tmp_path)
    _write(root, "tollgate/jira/jira.rego", JIRA)
    section = (ROOT / "README.md").read_text().split("### Checking policy", 1)[1].split("\n## ", 1)[0]
    shown = re.findall(r"```(?:console)?\n(.*?)```", section, re.S)[2].strip()
    result = _tollgate("check", "rego", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout.splitlines()[:-1] == [shown]


def test_the_same_package_under_the_prefix_is_clean(tmp_path: Path) -> None:
    root = _library(tmp_path)
    _write(root, "tollgate/rules/jira/jira.rego", JIRA.replace("package tollgate.jira", "package tollgate.rules.jira"))
    assert _problems(root) == []


@pytest.mark.parametrize(("name", "text", "message"), [
    ("tollgate/rules/jira/issues/issues.rego",
     'package tollgate.rules.jira.issues\n\nrequire_approval contains {"code": "x", "message": "y"} if input.kind\n',
     "package tollgate.rules.jira.issues defines require_approval, but no entrypoint reaches it"),
    ("tollgate/rules/jira/jira.rego", "package tollgate.rules.jira\n\nallow if input.kind == \"tool\"\n",
     "package tollgate.rules.jira defines allow, which the decision never reads"),
    ("jira/jira.rego", "package jira\n\nviolation contains \"closed\" if input.kind == \"tool\"\n",
     "package jira defines violation, but no entrypoint reaches it"),
    ("tollgate/rules/jira/jira.rego", "package tollgate.rules.jira\n\ndeny if input.kind == \"tool\"\n",
     "package tollgate.rules.jira defines deny as one value, not a set of reasons"),
], ids=["nested-under-the-prefix", "allow-in-a-rule-package", "another-root", "deny-as-a-boolean"])
def test_decision_shaped_rules_nothing_reads_are_refused(tmp_path: Path, name: str, text: str, message: str) -> None:
    root = _library(tmp_path)
    _write(root, name, text)
    if name.startswith("jira/"):
        _write(root, ".manifest", '{"roots": ["tollgate", "agents", "catalog", "jira"]}')
    problems = _problems(root)
    assert len(problems) == 1 and f"{root / name}:3: {message}" in problems[0], problems


def test_a_package_a_rule_package_refers_to_is_reached(tmp_path: Path) -> None:
    """A deny outside the prefix that a rule package reads (as tools reads data.tollgate.arguments[kind].deny) counts;
    so do test packages, which no decision reads, and a bundle without an entrypoint is not judged."""
    root = _library(tmp_path)
    _write(root, "tollgate/jira/jira.rego", JIRA)
    _write(root, "tollgate/rules/tickets/tickets.rego",
           "package tollgate.rules.tickets\n\nimport data.tollgate.jira\n\ndeny contains r if some r in jira.deny\n")
    _write(root, "tollgate/rules/tickets/tickets_test.rego",
           "package tollgate.rules.tickets_test\n\ndeny contains 1 if input.x\n\ntest_x if true\n")
    assert _problems(root) == []
    alone = tmp_path / "alone"
    _write(alone, "jira/jira.rego", JIRA.replace("package tollgate.jira", "package jira"))
    assert _problems(alone) == []
