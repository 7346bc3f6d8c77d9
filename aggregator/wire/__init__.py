"""Generated Goldmane stubs (proto/goldmane.proto); regenerate with `python proto/generate.py`."""
