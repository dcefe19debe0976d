"""Tenants, tenant users, and the tenant-scoping machinery."""
