"""A byte-level BPE tokenizer trained on the corpus (the ``tokenizers`` library), for from-scratch runs.

Why train one: a borrowed 49k-token vocabulary makes a ~10M-parameter model mostly embedding, and its output head
the most expensive matmul of every step on a CPU. A vocabulary of a few thousand tokens fitted to the corpus keeps
the parameters in the layers and the steps fast. The layout is SmolLM2's (each digit alone, then GPT-2's byte-level
split), which the GGUF exporter maps to llama.cpp's ``smollm`` pre-tokenizer, so a model trained on it exports and
tokenizes the same in llama.cpp. One special token, ``<|endoftext|>`` (id 0), is bos, eos and pad.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from hanlin.errors import ConfigurationError

EOS = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], folder: str | Path, *, vocab_size: int = 8192,
                    min_frequency: int = 2) -> Path:
    """Fit BPE on ``texts`` and save an HF tokenizer folder (tokenizer.json + tokenizer_config.json) there."""
    if vocab_size < 300:
        raise ConfigurationError(f"vocab_size {vocab_size} is below the 256 byte tokens plus merges; use >= 300")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    if tok.get_vocab_size() <= 257:
        raise ConfigurationError("the tokenizer learnt no merges: the corpus is empty or too small")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS)
    folder = Path(folder)
    fast.save_pretrained(str(folder))
    return folder
