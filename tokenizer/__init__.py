"""Hybrid tokenizer: multi-scale residual VQ (VAR) plus a continuous residual (HART)."""
from tokenizer.config import TokenizerConfig
from tokenizer.model import HybridTokenizer, TokenizerCode

__all__ = ["HybridTokenizer", "TokenizerCode", "TokenizerConfig"]
