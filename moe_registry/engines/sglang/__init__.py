"""SGLang 0.5.23: its MoE runner choice executed (executed.py), our names for its runners (names.py), and
the `sglang.srt.plugins` entry point (plugin.py)."""
