"""Tiny real GPT-NeoX checkpoints and BPE tokenizers, built locally for tests.

No weights can be downloaded here, so every test that needs a model builds one: a real
byte-level BPE (trained with `tokenizers`, GPT-2/NeoX style, so " she" and "she" are
different tokens) and a randomly initialised `GPTNeoXForCausalLM` saved with
`save_pretrained` (safetensors), exactly the layout a Pythia revision has.
"""
from __future__ import annotations

from pathlib import Path

import pytest

TINY_TEXT = [
    "Mia cried because she was sad. Tom cried because he was sad.",
    "Sue laughed because she won. Bob laughed because he won.",
    "Anna hurt herself. John hurt himself. Ella hurt herself. Max hurt himself.",
    "I ate an apple and a pear. She saw an owl and a cat. He found an egg and a box.",
    "The keys to the cabinet are here. The key to the cabinets is here.",
    "The dogs near the house were loud. The dog near the houses was loud.",
    "Lily said that she would come. Jack said that he would come.",
    "an umbrella, an orange, an igloo, a table, a chair, a dog, a house.",
]


def train_bpe_tokenizer(texts: list[str] | None = None, vocab_size: int = 320):
    """A byte-level BPE fast tokenizer with NeoX's special ids (<|endoftext|>=0, <|padding|>=1)."""
    from pythia_forensics.experiments.mini.tokenizer import bpe_from_texts

    return bpe_from_texts((texts or TINY_TEXT) * 20, vocab_size=vocab_size)


def tiny_neox(vocab_size: int, *, hidden: int = 32, layers: int = 2, heads: int = 4,
              intermediate: int | None = None, max_positions: int = 128, seed: int = 0):
    """A randomly initialised GPT-NeoX (Pythia's architecture), fp32, eval mode."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate or 4 * hidden,
        max_position_embeddings=max_positions,
        rotary_pct=0.25,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
    )
    model = GPTNeoXForCausalLM(config)
    # Default init is tiny; scale up so log-probs are far from uniform and bugs show.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    return model.eval()


def save_checkpoint(directory: Path, model, tokenizer) -> Path:
    """Write a save_pretrained directory (safetensors + tokenizer), as a Pythia revision."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def neox_tokenizer():
    """Pythia's real GPT-NeoX-20B tokenizer ($PF_NEOX_TOKENIZER, set in conftest.py), or skip."""
    from pythia_forensics.constants import neox_tokenizer_file
    from transformers import PreTrainedTokenizerFast

    path = neox_tokenizer_file()
    if path is None or not path.is_file():
        pytest.skip(f"GPT-NeoX-20B tokenizer not found at {path}; set PF_NEOX_TOKENIZER")
    return PreTrainedTokenizerFast(
        tokenizer_file=str(path),
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|padding|>",
    )
