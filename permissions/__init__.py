"""Roles, the permission matrix as data, and the security manager."""
