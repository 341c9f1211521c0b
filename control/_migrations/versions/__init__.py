"""Revisions of the profile store schema, oldest first."""
