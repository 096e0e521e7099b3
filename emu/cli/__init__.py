"""The ``isoemu`` command line: a thin layer over the Python API (see emu.cli.main)."""
