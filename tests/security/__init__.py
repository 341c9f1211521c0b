"""Security: read paths that cannot write, secrets that never leak."""
