"""An example third-party plugin: text tools registered through the `hanlin` entry point.

Install it (`pip install ./examples/plugin_package`), then `hanlin tools` lists
`reverse_text` and `word_count`, and `hanlin run -t word_count "..."` offers them.
The package's second entry point, `hanlin_demo_plugin.scripted`, registers a
model and a runtime.
"""

from hanlin import Toolkit, hookimpl, tool


class TextTools(Toolkit):
    """Two tools sharing one setting, to show toolkits."""

    def __init__(self, lowercase: bool = False) -> None:
        self.lowercase = lowercase

    @tool
    def reverse_text(self, text: str) -> str:
        """Reverse a text, character by character.

        Args:
            text: The text to reverse.
        """
        out = text[::-1]
        return out.lower() if self.lowercase else out

    @tool
    def word_count(self, text: str) -> int:
        """Count the words in a text.

        Args:
            text: The text whose words to count.
        """
        return len(text.split())


@hookimpl
def register_tools(register):
    register(TextTools())
