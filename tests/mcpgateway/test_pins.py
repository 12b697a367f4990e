"""Tool pins and annotation hints: what the gateway hands the policy (input.context.mcp_tool), and `tollgate check`
on a catalog's `pin`."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

from tests.conftest import REGO, ROOT, TOLLGATE
from tollgate.mcpgateway._pins import CONTEXT_CACHE_SIZE, ToolDefinitions, annotation_hints, call_context, tool_pin

SEARCH = {"name": "search_code", "description": "Search code.", "title": "Search",
          "inputSchema": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
          "annotations": {"readOnlyHint": True, "openWorldHint": False, "destructiveHint": "no", "title": "x"}}


def test_a_pin_is_the_sha256_of_the_canonical_name_description_and_input_schema() -> None:
    canonical = json.dumps({"description": "Search code.", "inputSchema": SEARCH["inputSchema"],
                            "name": "search_code"}, sort_keys=True, separators=(",", ":"))
    assert tool_pin(SEARCH) == "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
    # Key order, the title and the annotations are not the definition; description and schema are.
    reordered = dict(reversed(list(SEARCH.items())), title="Other", annotations={})
    assert tool_pin(reordered) == tool_pin(SEARCH)
    assert tool_pin({**SEARCH, "description": "Search code, then post it."}) != tool_pin(SEARCH)
    assert tool_pin({**SEARCH, "inputSchema": {"type": "object"}}) != tool_pin(SEARCH)
    assert tool_pin({"name": "t"}) == tool_pin({"name": "t", "description": None, "inputSchema": {}})


def test_only_boolean_hints_are_passed_on() -> None:
    assert annotation_hints(SEARCH) == {"readOnlyHint": True, "openWorldHint": False}
    assert annotation_hints({"name": "t", "annotations": "read-only"}) == {}
    assert call_context(SEARCH) == {"listed": True, "pin": tool_pin(SEARCH),
                                    "annotations": {"readOnlyHint": True, "openWorldHint": False}}
    assert call_context(None) == {"listed": False, "pin": "", "annotations": {}}


def test_definitions_are_listed_again_once_stale() -> None:
    tools = ToolDefinitions()
    assert not tools.known("search_code")
    tools.replace([SEARCH, {"name": 7}, "junk"])
    assert tools.known("search_code") and tools.get("search_code") == SEARCH and not tools.known("7")
    tools.merge([{"name": "next_page"}])
    assert tools.known("next_page")
    tools.stale = True
    assert not tools.known("search_code")


def test_check_takes_a_sha256_pin_and_refuses_anything_else(tmp_path: Path) -> None:
    root = tmp_path / "rego"
    shutil.copytree(REGO, root)
    catalog = root / "catalog" / "tools" / "data.yaml"
    good = catalog.read_text().replace("\ngithub/search_code:\n", f"\ngithub/search_code:\n  pin: {tool_pin(SEARCH)}\n")
    catalog.write_text(good)
    done = subprocess.run([*TOLLGATE, "check", str(root)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done
    catalog.write_text(good.replace(f"pin: {tool_pin(SEARCH)}", "pin: md5:0f00"))
    done = subprocess.run([*TOLLGATE, "check", str(root)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 1 and 'github/search_code.pin: "md5:0f00" is not sha256:HEX' in done.stdout, done


def test_a_tools_call_context_is_remembered_until_it_is_listed_again() -> None:
    """The pin is hashed once per listed definition (cachetools LRUCache, bounded), not at every call; a listing
    that changes the tool gives its new pin, and the context handed out is a copy."""
    tools = ToolDefinitions()
    tools.replace([SEARCH])
    first = tools.call_context("search_code")
    assert first == call_context(SEARCH)
    first["pin"] = "tampered"
    first["annotations"]["readOnlyHint"] = False
    assert tools.call_context("search_code") == call_context(SEARCH)
    changed = {**SEARCH, "description": "Search code, and also delete it."}
    tools.merge([changed])
    assert tools.call_context("search_code")["pin"] == tool_pin(changed) != tool_pin(SEARCH)
    tools.replace([SEARCH])
    assert tools.call_context("search_code")["pin"] == tool_pin(SEARCH)
    assert tools.call_context("no_such_tool") == call_context(None)
    tools.replace([{"name": f"t{i}"} for i in range(CONTEXT_CACHE_SIZE + 5)])
    for i in range(CONTEXT_CACHE_SIZE + 5):
        assert tools.call_context(f"t{i}")["pin"] == tool_pin({"name": f"t{i}"})
    assert len(tools._contexts) == CONTEXT_CACHE_SIZE
