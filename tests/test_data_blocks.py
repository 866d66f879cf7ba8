"""Each data block on small inputs, with the exact output it must give (and the exact reason it drops)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hanlin.plugins.data.cleaners import BoilerplateCleaner, FtfyCleaner, WhitespaceCleaner
from hanlin.plugins.data.code_filter import CodeFilter
from hanlin.plugins.data.dedup_exact import ExactDedup
from hanlin.plugins.data.document import DataError, Document, TaskContext
from hanlin.plugins.data.filters import GopherFilter, LanguageFilter, LengthFilter, PredicateFilter
from hanlin.plugins.data.minhash import MinHashDedup, MinHasher, optimal_bands, shingles
from hanlin.plugins.data.pii import PiiMasker
from hanlin.plugins.data.readers import ChatReader, HtmlReader, JsonlReader, ParquetReader, TextReader

PROSE = ("The library reads the configuration file when the program starts, and it checks that each value has the "
         "type that the documentation describes. When a value is wrong, the error names the file and the line, so "
         "that the user can fix it without reading the source. The same rules apply to values given on the command "
         "line, which override the file. Tests cover each rule with a small example and the exact message expected.")


def run(block, docs, task=0, tmp=None, on_error="skip"):
    block.open(TaskContext(task, tmp or ".", on_error))
    out = list(block(docs))
    block.commit()
    return out


def texts(docs):
    return [d.text for d in docs]


def test_cleaners_exact():
    assert texts(run(FtfyCleaner(), [Document("a", "CafÃ© â€” naÃ¯ve")])) == ["Café — naïve"]
    ws = WhitespaceCleaner()
    assert texts(run(ws, [Document("a", "  a  b\t\tc  \r\n\r\n\r\n\r\n    indented  line \n")])) == [
        "a b c\n\n    indented line"]
    bp = BoilerplateCleaner()
    out = run(bp, [Document("a", "Real content here.\nWe use cookies. Accept all cookies\nShare\nMore content."),
                   Document("b", "All rights reserved.")])
    assert texts(out) == ["Real content here.\nMore content."]
    assert out[0].metadata["boilerplate_lines"] == 2
    assert bp.stats.dropped == {"empty after boilerplate": 1}


def test_filters_exact_reasons():
    lang = LanguageFilter(languages=["en"])
    out = run(lang, [Document("en", PROSE), Document("fr", "Bonjour tout le monde, je suis très heureux de vous "
                                                           "voir ici aujourd'hui avec tous mes amis de Paris.")])
    assert [d.id for d in out] == ["en"] and out[0].metadata["language"] == "en"
    assert lang.stats.dropped == {"language fr": 1}

    length = LengthFilter(min_chars=5, max_words=3)
    run(length, [Document("a", "abc"), Document("b", "one two three four"), Document("c", "one two")])
    assert length.stats.dropped == {"shorter than 5 chars": 1, "more than 3 words": 1} and length.stats.docs_out == 1

    gopher = GopherFilter()
    repeated = "\n".join(["Read the list of the things to do with the dog today."] * 12)
    symbols = " ".join(["#tag and the word of it"] * 20)
    out = run(gopher, [Document("ok", PROSE), Document("rep", repeated), Document("short", "Too short to be a page."),
                       Document("sym", symbols)])
    assert [d.id for d in out] == ["ok"]
    assert gopher.stats.dropped == {"gopher: duplicate lines": 1, "gopher: too few words": 1,
                                    "gopher: symbol ratio": 1}

    pred = PredicateFilter(lambda d: "keep" in d.text)
    assert [d.id for d in run(pred, [Document("a", "keep me"), Document("b", "drop me")])] == ["a"]
    assert pred.stats.dropped == {"predicate <lambda>": 1}
    assert PredicateFilter("os.path:isabs").fn("/x") is True
    with pytest.raises(Exception, match="module:function"):
        PredicateFilter("nocolon")


def test_code_filter_drops_generated_files_and_data_tables_of_the_standard_library():
    import encodings
    import importlib.metadata
    import textwrap
    from pathlib import Path

    def read(path: str) -> str:
        return Path(path).read_text(encoding="utf-8")

    codecs = Path(encodings.__file__).parent
    docs = [Document("textwrap", read(textwrap.__file__)),                 # real code: kept
            Document("readme", importlib.metadata.metadata("pydantic").get_payload()),  # a package's description
            Document("cp855", read(codecs / "cp855.py")),                  # "generated from ... with gencodec.py"
            Document("cp1125", read(codecs / "cp1125.py")),                # a hand-written codec table, no marker
            Document("minified", "var a=1;" * 200),
            Document("base64", "DATA = (\n" + "    b'" + "QUJD" * 300 + "'\n)\n")]
    block = CodeFilter()
    assert [d.id for d in run(block, docs)] == ["textwrap", "readme"]
    assert block.stats.dropped == {
        "code: generated (a marker such as 'do not edit' in the first 5 lines)": 1,
        "code: digit share over 0.1 (a data table)": 1,
        "code: a line longer than 1000 chars": 2,
    }
    relaxed = CodeFilter(max_digit_fraction=None, generated=False, max_line_length=None, max_mean_line_length=None)
    assert len(run(relaxed, docs)) == 6


def test_pii_masking_exact():
    doc = Document("a", "Mail jane.doe+x@mail.example.org or call +1 555-123-4567 / (555) 987-6543. Server at "
                        "192.168.0.12, not version 3.11.7 nor 2024-01-15 nor 999.1.1.1 nor ticket 12 345 678.")
    out = run(PiiMasker(), [doc])[0]
    assert out.text == ("Mail <EMAIL> or call <PHONE> / <PHONE>. Server at <IP>, not version 3.11.7 nor 2024-01-15 "
                        "nor 999.1.1.1 nor ticket 12 345 678.")
    assert out.metadata["pii"] == {"email": 1, "ip": 1, "phone": 2}


def test_exact_dedup_keeps_smallest_id_whatever_the_order():
    block = ExactDedup()
    ids = ["c", "a", "b", "d"]
    docs = {"a": "Same  TEXT", "b": "other", "c": "same text", "d": "same text "}
    keys = [block.key(Document(i, docs[i])) for i in ids]
    assert block.resolve(ids, keys) == {"c": "a", "d": "a"}
    assert block.resolve(ids[::-1], keys[::-1]) == {"c": "a", "d": "a"}
    block.removed = {"c": "a"}
    assert [d.id for d in run(block, [Document("a", "x"), Document("c", "x")])] == ["a"]
    assert block.stats.dropped == {"exact duplicate": 1}


def test_minhash_bands_signatures_and_clusters():
    assert optimal_bands(0.8, 128) == (9, 13)  # the split datasketch's MinHashLSH picks for the same threshold
    assert optimal_bands(0.8, 128, 0.05, 0.95) == (16, 8) and MinHashDedup(threshold=0.8).bands == 16
    assert shingles("A b c", 5) == {"a b c"} and shingles("a b c d", 2) == {"a b", "b c", "c d"}
    words = PROSE.split()
    near = " ".join(words[:30] + ["changed"] + words[31:])  # one word of 68 changed: Jaccard ~0.87
    other = " ".join(reversed(words))
    h = MinHasher(128, 5, 1)
    true_j = len(shingles(PROSE, 5) & shingles(near, 5)) / len(shingles(PROSE, 5) | shingles(near, 5))
    est = float(np.mean(h.signature(PROSE) == h.signature(near)))
    assert 0.8 < true_j < 0.95 and abs(est - true_j) < 0.12
    errors = []  # unbiased over independent hash draws (a weak hash family once overestimated by ~0.15)
    for k in range(16):
        a = " ".join(f"w{i}" for i in range(300))
        b = " ".join(f"w{i}" for i in range(15 * k, 300 + 15 * k))
        sa, sb = shingles(a, 5), shingles(b, 5)
        hk = MinHasher(128, 5, seed=k + 1)
        errors.append(float(np.mean(hk.signature(a) == hk.signature(b))) - len(sa & sb) / len(sa | sb))
    assert abs(float(np.mean(errors))) < 0.03 and max(map(abs, errors)) < 0.13
    block = MinHashDedup(threshold=0.8)
    ids = ["z-near", "m-orig", "a-other", "b-near-too"]
    texts_ = [near, PROSE, other, near + " extra"]
    keys = [block.key(Document(i, t)) for i, t in zip(ids, texts_)]
    expected = {"m-orig": "b-near-too", "z-near": "b-near-too"}  # one cluster of three; the smallest id stays
    assert block.resolve(ids, keys) == expected
    assert block.resolve(ids[::-1], keys[::-1]) == expected


def test_jsonl_reader_reports_each_bad_line(tmp_path):
    (tmp_path / "in.jsonl").write_bytes(
        b'{"text": "good one", "id": "g1", "lang": "en"}\n'
        b'{"text": "broken\n'
        b'{"text": "bad \xff byte"}\n'
        b'\n'
        b'{"text": "  "}\n'
        b'{"body": "no text"}\n'
        b'[1, 2]\n'
        b'{"text": "good two"}\n')
    reader = JsonlReader(str(tmp_path / "in.jsonl"))
    out = run(reader, [], tmp=tmp_path)
    assert [(d.id, d.text, d.metadata) for d in out] == [("g1", "good one", {"lang": "en", "source": "in.jsonl:1"}),
                                                         ("in.jsonl:8", "good two", {"source": "in.jsonl:8"})]
    assert reader.stats.docs_in == 7 and reader.stats.docs_out == 2
    assert {(e["where"], e["detail"]) for e in reader.stats.examples} == {
        ("in.jsonl:2", "broken JSON (Invalid control character at column 17)"),
        ("in.jsonl:3", "undecodable bytes (byte 0xff at column 15 is not UTF-8)"),
        ("in.jsonl:5", "empty document"),
        ("in.jsonl:6", "missing column 'text' (the row has body)"),
        ("in.jsonl:7", "not a JSON object (a list)"),
    }
    with pytest.raises(DataError, match=r"^in\.jsonl:2: broken JSON"):
        run(JsonlReader(str(tmp_path / "in.jsonl")), [], tmp=tmp_path, on_error="stop")


def test_parquet_text_html_readers(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["one", None, "three"], "n": [1, 2, 3]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "b.parquet")
    reader = ParquetReader(str(tmp_path / "*.parquet"))
    out = run(reader, [], tmp=tmp_path)
    assert [(d.id, d.text, d.metadata["n"]) for d in out] == [("a.parquet:1", "one", 1), ("a.parquet:3", "three", 3)]
    assert reader.stats.dropped == {"empty document": 1, "missing column 'text'": 1}
    assert [e["where"] for e in reader.stats.examples] == ["a.parquet:2", "b.parquet:0"]

    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.md").write_text("# Title\n\nBody.")
    (docs / "sub" / "b.txt").write_bytes(b"line one\nline \xfe two\n")
    (docs / "c.py").write_text("ignored")
    text = TextReader(str(docs))
    assert [(d.id, d.text) for d in run(text, [], tmp=tmp_path)] == [("a.md", "# Title\n\nBody.")]
    assert text.stats.examples[0]["where"] == "sub/b.txt:2"
    assert text.stats.examples[0]["detail"] == "undecodable bytes (byte 0xfe at column 6 is not UTF-8)"

    page = ("<html><head><title>T</title></head><body><nav>Home | About | Contact</nav><article><h1>Packing</h1>"
            f"<p>{PROSE}</p></article><footer>Copyright footer</footer></body></html>")
    (tmp_path / "p.html").write_text(page)
    html = HtmlReader(str(tmp_path / "p.html"))
    (doc,) = run(html, [], tmp=tmp_path)
    assert PROSE in doc.text and "Home | About" not in doc.text


def test_chat_reader_keeps_messages(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
            {"status": "answered", "model_view": {"messages": [{"role": "user", "content": "2+2?"},
                                                               {"role": "assistant", "content": "4"}]}},
            {"messages": [{"role": "wizard", "content": "x"}]}]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    reader = ChatReader(str(tmp_path / "c.jsonl"))
    out = run(reader, [], tmp=tmp_path)
    assert texts(out) == ["user: Hi\n\nassistant: Hello!", "user: 2+2?\n\nassistant: 4"]
    assert out[0].metadata["messages"] == rows[0]["messages"]
    assert reader.stats.examples[0]["where"] == "c.jsonl:3" and "role" in reader.stats.examples[0]["detail"]


def test_perplexity_filter_scores_with_a_real_causal_lm(tmp_path):
    """A tiny random llama (built from a config, saved as an HF folder with a real tokenizer): the filter's score
    equals the model's own loss computed independently, and the threshold splits documents exactly there."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from hanlin.plugins.data.perplexity import PerplexityFilter

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([PROSE] * 3, trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "</s>"]))
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    hf_tok.save_pretrained(tmp_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    texts = [PROSE, "the the the the the the the the", "values line file error source rules message tests"]
    expected = []
    for t in texts:
        ids = hf_tok(t, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.inference_mode():
            logits = model(input_ids=ids).logits[0, :-1]
        nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:])
        expected.append(float(torch.exp(nll)))
    cut = round((sorted(expected)[1] + sorted(expected)[2]) / 2, 3)  # between the 2nd and 3rd score
    block = PerplexityFilter(str(tmp_path), max_perplexity=cut)
    out = run(block, [Document(str(i), t) for i, t in enumerate(texts)])
    scores = [d.metadata["perplexity"] for d in out]
    assert sorted(d.id for d in out) == sorted(str(i) for i, e in enumerate(expected) if e <= cut)
    assert scores == pytest.approx([e for e in expected if e <= cut], rel=1e-4)
    assert block.stats.dropped == {f"perplexity above {cut}": 1}


def test_writers_write_shards_on_commit_only(tmp_path):
    from hanlin.plugins.data.writers import JsonlWriter, ParquetWriter

    docs = [Document("a", "first", {"lang": "en"}), Document("b", "second é", {"pii": {"email": 1}})]
    jw, pw = JsonlWriter(path="j"), ParquetWriter(path="p")
    for w in (jw, pw):
        w.open(TaskContext(7, tmp_path))
        assert [d.id for d in w(docs)] == ["a", "b"]
        assert not list((tmp_path / w.path).glob("part-*[ltq]"))  # only the .tmp exists before commit
        w.commit()
    assert [json.loads(x) for x in (tmp_path / "j" / "part-00007.jsonl").read_text().splitlines()] == [
        d.as_dict() for d in docs]
    back = run(ParquetReader(str(tmp_path / "p" / "part-00007.parquet")), [], tmp=tmp_path)
    assert [(d.id, d.text, d.metadata) for d in back] == [
        ("a", "first", {"lang": "en", "source": "part-00007.parquet:1"}),
        ("b", "second é", {"pii": {"email": 1}, "source": "part-00007.parquet:2"})]
