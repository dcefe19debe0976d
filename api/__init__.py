"""Billfold's REST API (v1)."""
