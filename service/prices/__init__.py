"""Dated price tables for `clickstream cost` (package data: one TOML file per region)."""
