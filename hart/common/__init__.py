"""The project's plumbing leaves: checkpoint I/O (``io``), datasets (``data``), distributed
setup (``dist``), EMA (``ema``), one-line user errors and faults (``errors``), the user's text
files and output paths (``fs``), image grids (``images``) and the small pieces both training
loops share (``loop``).

This subpackage imports nothing else of the project, so the tokenizer, the generator,
sampling and the demo can all build on it (tests/test_layers.py enforces the direction).
"""
