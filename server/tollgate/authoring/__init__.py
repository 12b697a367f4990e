"""Authoring tools: policy checks, Rego tests, manifest schemas, replay and promotion.

The sidecar never imports them.
"""
