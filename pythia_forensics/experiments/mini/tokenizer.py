"""The mini suite's byte-level BPE tokenizer, saved as a Hugging Face fast tokenizer.

GPT-NeoX style (byte-level, no prefix space, so " she" and "she" are different tokens) with
NeoX's special ids: <|endoftext|> = 0, <|padding|> = 1. Trained on a fixed sample of the
generator's sentences (independent of the support knobs), so every arm of a sweep shares one
vocabulary and one loading path serves the mini suite and Pythia.
"""
from __future__ import annotations

from pythia_forensics.errors import CorpusError
from pythia_forensics.experiments.mini.config import CorpusConfig
from pythia_forensics.corpus.lexicon import Lexicon, load_lexicon

TOKENIZER_SAMPLE_SENTENCES = 20_000
TOKENIZER_SEED = 0  # fixed: the vocabulary must not depend on the corpus seed or knobs


def build_tokenizer(*, vocab_size: int = 1024, lexicon: Lexicon | None = None):
    """Train the BPE on a fixed sample of generated sentences.

    Args:
        vocab_size: BPE vocabulary size (including the two special tokens).
        lexicon: defaults to probes/lexicon.yaml.

    Returns:
        A `PreTrainedTokenizerFast`.

    Raises:
        CorpusError: some lexicon word is not a single token (raise vocab_size).
    """
    from pythia_forensics.experiments.mini.corpus import _word_ids, sample_records

    lex = lexicon or load_lexicon()
    # Every conflict frame at a high share so rare frames are covered.
    records = sample_records(CorpusConfig(), n_sentences=TOKENIZER_SAMPLE_SENTENCES, lexicon=lex,
                             seed=TOKENIZER_SEED)
    texts = [r.text(lex) for r in records]
    # Each word alone, with and without a leading space, so all of them become single tokens.
    words = sorted(lex.all_words())
    texts += [f"{w} {w}" for w in words] * 20
    fast = bpe_from_texts(texts, vocab_size=vocab_size)
    if fast.convert_tokens_to_ids("<|endoftext|>") != 0 or fast.convert_tokens_to_ids("<|padding|>") != 1:
        raise CorpusError("mini tokenizer special ids differ from NeoX's (<|endoftext|>=0, <|padding|>=1)")
    _word_ids(fast, words)  # raises if a lexicon word is split
    return fast


def bpe_from_texts(texts, *, vocab_size: int):
    """A byte-level BPE trained on `texts`, GPT-2/NeoX style (" she" and "she" are different
    tokens), as a Hugging Face fast tokenizer with NeoX's special ids (<|endoftext|>=0,
    <|padding|>=1), so the same loading code serves the mini suite and Pythia."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|padding|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|padding|>",
    )
