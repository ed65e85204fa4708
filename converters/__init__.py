"""Backend converters: one module per backend (ExecuTorch, Core ML, TFLite/LiteRT).

Each backend module imports its toolchain lazily, so a missing optional
dependency disables only that target. The shared request/result types live in
:mod:`converters.common`.
"""
