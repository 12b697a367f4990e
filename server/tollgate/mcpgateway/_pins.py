"""Tool definitions as the upstream lists them: their pins (what the catalog's `pin` is compared with) and their
annotations, which the policy reads as claims of the upstream, never as facts.

    tool_pin({"name": "search_code", "description": "Search code.", "inputSchema": {...}})  # "sha256:9f2c..."
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from cachetools import LRUCache

from tollgate.encoding import canonical_json

#: The MCP tool annotations passed to the policy (input.context.mcp_tool.annotations), when the upstream sets them.
ANNOTATION_HINTS = ("readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint")
#: What a pin is made of: a change to any of these is a changed tool.
PINNED_FIELDS = ("name", "description", "inputSchema")
#: Most tools whose call context (pin, hints) ToolDefinitions remembers between calls.
CONTEXT_CACHE_SIZE = 1024


def tool_pin(tool: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of the tool's name, description ("" when absent) and input schema ({} when
    absent), as "sha256:HEX": the value of a catalog entry's `pin`."""
    definition = {"name": tool.get("name", ""), "description": tool.get("description") or "",
                  "inputSchema": tool.get("inputSchema") or {}}
    return "sha256:" + hashlib.sha256(canonical_json(definition).encode()).hexdigest()


def annotation_hints(tool: Mapping[str, Any]) -> dict[str, bool]:
    """The tool's boolean annotation hints the upstream declared (others left out: absent means unknown)."""
    annotations = tool.get("annotations")
    if not isinstance(annotations, Mapping):
        return {}
    return {k: v for k in ANNOTATION_HINTS if isinstance(v := annotations.get(k), bool)}


def call_context(tool: Mapping[str, Any] | None) -> dict[str, Any]:
    """input.context.mcp_tool for a call: the listed tool's pin and hints; for a tool the upstream does not list,
    pin "" (which matches no catalog pin: a pinned tool the upstream hides from tools/list is denied)."""
    if tool is None:
        return {"listed": False, "pin": "", "annotations": {}}
    return {"listed": True, "pin": tool_pin(tool), "annotations": annotation_hints(tool)}


class ToolDefinitions:
    """The upstream's tools by name, as last listed; `stale` after the upstream said its list changed."""

    def __init__(self) -> None:
        self._tools: dict[str, Mapping[str, Any]] = {}
        # Each listed tool's call context, computed at its first call and kept until the tool is listed again:
        # a pin hashes the canonical JSON of the definition (~90 µs for a 1 KB one), the same for every call.
        self._contexts: LRUCache[str, dict[str, Any]] = LRUCache(maxsize=CONTEXT_CACHE_SIZE)
        self.stale = True

    def replace(self, tools: list[Any]) -> None:
        self._tools = {t["name"]: t for t in tools if isinstance(t, Mapping) and isinstance(t.get("name"), str)}
        self._contexts.clear()
        self.stale = False

    def merge(self, tools: list[Any]) -> None:
        """One page of a paginated tools/list."""
        page = {t["name"]: t for t in tools if isinstance(t, Mapping) and isinstance(t.get("name"), str)}
        self._tools.update(page)
        for name in page:
            self._contexts.pop(name, None)

    def call_context(self, name: str) -> dict[str, Any]:
        """call_context of the tool as last listed (of None when it is not listed), remembered per tool until it
        is listed again; a copy each time, so that no caller changes what the next call is decided with."""
        tool = self._tools.get(name)
        if tool is None:
            return call_context(None)
        found = self._contexts.get(name)
        if found is None:
            found = self._contexts[name] = call_context(tool)
        return {**found, "annotations": dict(found["annotations"])}

    def get(self, name: str) -> Mapping[str, Any] | None:
        return self._tools.get(name)

    def known(self, name: str) -> bool:
        return not self.stale and name in self._tools

    def all(self) -> list[Mapping[str, Any]]:
        return list(self._tools.values())
