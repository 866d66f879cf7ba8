"""The apps' pages in the web UI, in a real browser (Debian's Chromium through Playwright): the research graph growing
live as the run streams, and the assistant's retrieval testing. Scripted models: the pages and their routes are what
is examined (the models' own runs are in test_research_e2e and test_assistant_e2e)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_web_ui import PAYLOAD, browser, browsing, open_page, page, running, screenshot, shots  # noqa: F401

from hanlin import ScriptedModel  # noqa: E402
from hanlin.plugins.tools.kb_index import KnowledgeIndex  # noqa: E402
from hanlin.server import create_app  # noqa: E402
from playwright.sync_api import Page, expect  # noqa: E402
from tests.test_app_routes import two_hop  # noqa: E402

DOCS = {"alpha.md": f"# alpha\n\nalpha is written by Ada. {PAYLOAD}\n",
        "ada.md": "# Ada\n\nAda was born in London.\n"}


def test_research_graph_grows_live_with_citations_as_text(page: Page, shots: Path, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    app = create_app(two_hop(delay=0.6), model_name="scripted", app_options={"research.search": f"local:{docs}"})
    # Each status a node shows, in order, as the DOM changes: proof the graph is drawn while the run goes on.
    page.add_init_script("""
      window.__status = {};
      new MutationObserver(() => {
        for (const g of document.querySelectorAll("svg.research-graph g.node[data-status]")) {
          const seen = (window.__status[g.dataset.nodeId] ||= []);
          if (seen[seen.length - 1] !== g.dataset.status) seen.push(g.dataset.status);
        }
      }).observe(document, {childList: true, subtree: true, attributes: true});
    """)
    with running(app) as url:
        open_page(page, url, "research")
        expect(page.locator("nav a[data-page=research]")).to_have_attribute("aria-current", "page")
        expect(page.locator("#research-protocol")).to_have_value("react")
        page.locator("#research-protocol").select_option("tools")  # the scripted searchers answer as tool calls
        box = page.locator("#research-question")
        box.fill("Where was the author of alpha born?")
        box.press("Enter")
        expect(page.locator("g.node[data-node-id=born][data-status=running]")).to_be_attached(timeout=30_000)
        screenshot(page, shots, "research-running")
        expect(page.locator("[data-view=research][data-status=answered]")).to_be_attached(timeout=60_000)
        status = page.evaluate("window.__status")
        assert status["author"] == ["planned", "running", "answered"]
        assert status["born"] == ["planned", "running", "answered"]
        # the edges follow the plan: question -> author -> born -> answer
        for a, b in (("__question", "author"), ("author", "born"), ("born", "__answer")):
            expect(page.locator(f"path.edge[data-from='{a}'][data-to='{b}']")).to_have_count(1)
        assert page.locator("#research-answer .answer-text").inner_text() == \
            "Ada wrote alpha [1] and was born in London [2]."
        refs = page.locator("#research-answer .references li")
        expect(refs).to_have_count(2)
        # the passage full of HTML is shown as its text, and nothing in it ran
        assert "<script>" in refs.nth(0).locator("blockquote").inner_text()
        assert page.evaluate("window.__pwned") is None
        assert page.locator("#research-answer script, #research-answer img").count() == 0
        # keyboard: a node is a button; Enter opens its steps and cited passage
        page.locator("g.node[data-node-id=born]").focus()
        page.keyboard.press("Enter")
        detail = page.locator("#research-detail")
        expect(detail.locator("h3")).to_have_text("born: Ada born London")
        expect(detail.locator(".searcher-steps li.tool_call").first).to_contain_text("search")
        expect(page.locator(".research .download")).to_be_visible()
        screenshot(page, shots, "research-answered")
        page.set_viewport_size({"width": 390, "height": 844})
        assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1  # the graph scrolls, not the page
        screenshot(page, shots, "research-phone")


def test_assistant_retrieval_testing_page(page: Page, shots: Path, tmp_path: Path) -> None:
    from tests.test_assistant import DOCS as KB_DOCS
    from tests.test_assistant import routed_model

    docs = tmp_path / "kb-docs"
    docs.mkdir()
    for name, text in KB_DOCS.items():
        (docs / name).write_text(text)
    index = KnowledgeIndex.build(docs, backend="bm25").save(tmp_path / "kb")
    app = create_app(routed_model(), model_name="scripted", app_options={"assistant.kb": str(index)})
    with running(app) as url:
        open_page(page, url, "assistant")
        box = page.locator("#assistant-query")
        box.fill("how do I reset my VPN password?")
        box.press("Enter")
        verdict = page.locator("#assistant-verdict")
        expect(verdict).to_contain_text("In the knowledge base", timeout=20_000)
        first = page.locator("table.hits tbody tr").first
        expect(first).to_have_class(re.compile("accepted"))
        assert first.get_attribute("data-source").startswith("vpn.md")
        screenshot(page, shots, "assistant-retrieval-in")
        box.fill("quantum chromodynamics lattice")
        page.locator("#assistant-retrieve").click()
        expect(verdict).to_contain_text("Not in the knowledge base", timeout=20_000)
        assert page.locator("table.hits tbody tr.accepted").count() == 0
        box.fill("does the VPN password portal support IPv6 tunnels and WireGuard keys?")  # the topic, not the words
        page.locator("#assistant-retrieve").click()
        expect(verdict).to_contain_text("the topic is, but the passages hold only", timeout=20_000)
        expect(verdict).to_contain_text("ipv6, tunnels")
        box.fill("how do I reset my VPN password?")
        page.locator("#assistant-decide").click()
        expect(verdict).to_have_text("The assistant would answer.", timeout=20_000)
        stages = page.locator("ol.stages li")
        assert [stages.nth(i).get_attribute("data-stage") for i in range(stages.count())] == \
            ["is_question", "retrieve", "relevance", "answer", "check"]
        expect(page.locator("#assistant-answer")).to_have_text("Reset it at the self-service portal [1].")
        screenshot(page, shots, "assistant-decision")


def test_app_tabs_are_absent_when_the_app_is_not_mounted(page: Page) -> None:
    app = create_app(ScriptedModel([]), model_name="scripted")
    with running(app) as url:
        open_page(page, url)
        expect(page.locator("nav a[data-page=research]")).to_have_count(1)
        expect(page.locator("nav a[data-page=assistant]")).to_have_count(0)  # no --app assistant.kb
        page.goto(f"{url}/#/assistant")
        expect(page.locator("body[data-ready=chat]")).to_be_attached(timeout=15_000)


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
