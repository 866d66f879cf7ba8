"""The data toolbox's plugin: every built-in block registered by name (``plugins().data_blocks()``), and the
``hanlin data`` / ``hanlin bench data`` commands. Block classes are imported only when a pipeline builds one."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from hanlin import hookimpl
from hanlin.specs import ComponentSpec

BLOCKS: dict[str, tuple[str, str]] = {
    "jsonl": ("readers:JsonlReader", "read JSONL (text_key, id_key); bad lines named by file:line"),
    "parquet": ("readers:ParquetReader", "read Parquet files (text_key, id_key)"),
    "text": ("readers:TextReader", "read text/markdown folders, one document per file (extensions)"),
    "html": ("readers:HtmlReader", "read HTML pages, main text extracted by trafilatura"),
    "chat": ("readers:ChatReader", "read chat or hanlin-trace JSONL (messages kept in metadata)"),
    "ftfy": ("cleaners:FtfyCleaner", "repair broken unicode and mojibake (ftfy)"),
    "whitespace": ("cleaners:WhitespaceCleaner", "normalise line ends, trailing spaces, blank-line runs"),
    "boilerplate": ("cleaners:BoilerplateCleaner", "remove boilerplate lines (cookie banners, share buttons...)"),
    "language": ("filters:LanguageFilter", "keep languages (langid) above a probability"),
    "length": ("filters:LengthFilter", "keep documents within char/word bounds"),
    "gopher": ("filters:GopherFilter", "Gopher quality and repetition rules"),
    "code": ("code_filter:CodeFilter", "drop generated files, data tables and minified text from a code corpus"),
    "predicate": ("filters:PredicateFilter", "keep documents where a user function (module:function) is true"),
    "exact_dedup": ("dedup_exact:ExactDedup", "drop exact duplicates (normalised text), keep the smallest id"),
    "minhash": ("minhash:MinHashDedup", "MinHash LSH near-dedup at a Jaccard threshold, keep the smallest id"),
    "pii": ("pii:PiiMasker", "mask e-mails, phone numbers and IP addresses"),
    "write_jsonl": ("writers:JsonlWriter", "write JSONL shards (part-NNNNN.jsonl)"),
    "write_parquet": ("writers:ParquetWriter", "write Parquet shards (part-NNNNN.parquet)"),
    "perplexity": ("perplexity:PerplexityFilter", "keep documents a small causal LM (HF folder) scores within bounds"),
    "pack": ("pack:PackBlock", "tokenize and pack into hanlin-packed-v1 token shards for pre-training"),
}


def _lazy(ref: str) -> Callable[..., Any]:
    module, attr = ref.split(":")

    def factory(**options: Any) -> Any:
        return getattr(importlib.import_module(f"hanlin.plugins.data.{module}"), attr)(**options)

    factory.__name__ = attr
    return factory


@hookimpl
def register_data(register: Any) -> None:
    for name, (ref, description) in BLOCKS.items():
        register(ComponentSpec(name=name, factory=_lazy(ref), description=description))


@hookimpl
def register_commands(cli: Any) -> None:
    from hanlin.plugins.data.cli import add_data_commands

    add_data_commands(cli)
