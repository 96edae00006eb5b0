"""Shared core: every service and training stage builds on these modules."""
