"""The package version, defined once."""

VERSION = "0.1.0"
