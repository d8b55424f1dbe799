"""Maintenance tools run by hand from the repository root (``python -m tools.<name>`` or ``python tools/<name>.py``);
never imported by the package or a stage. ``tools.scratch_repo`` builds the scratch copies tests and tools share."""
