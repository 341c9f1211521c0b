"""The panels that ship with comptroller (one TOML file each)."""
