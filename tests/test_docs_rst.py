# SPDX-License-Identifier: Apache-2.0
"""The docs build renders the reStructuredText directives of docstrings as Markdown."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path
from types import ModuleType

import pytest

TOOLS_DIR = Path(__file__).resolve().parent.parent / "tools"


@pytest.fixture(name="griffe_rst", scope="module")
def fixture_griffe_rst() -> ModuleType:
    """The docs build's griffe extension, loaded from its file (tools/ is not a package)."""
    pytest.importorskip("griffe")
    spec = importlib.util.spec_from_file_location("griffe_rst", TOOLS_DIR / "griffe_rst.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def docstring(text: str) -> str:
    return inspect.cleandoc(text)


class TestConvert:
    def test_warning_becomes_an_admonition(self, griffe_rst: ModuleType) -> None:
        """A top-level ``.. warning::`` block becomes a Material admonition with its text."""
        source = docstring(
            """
            Verify requests.

            .. warning::
               Only list proxies you operate.
            """
        )

        expected = "Verify requests.\n\n!!! warning\n    Only list proxies you operate."
        assert expected == griffe_rst.convert(source)

    def test_warning_text_on_the_directive_line_is_kept(self, griffe_rst: ModuleType) -> None:
        """Text after ``.. warning::`` on the same line opens the admonition body."""
        source = docstring(
            """
            .. warning:: The metrics show segment names. Mount the
               app behind your own protection.
            """
        )

        expected = (
            "!!! warning\n    The metrics show segment names. Mount the\n"
            "    app behind your own protection."
        )
        assert expected == griffe_rst.convert(source)

    def test_nested_warning_keeps_its_indentation(self, griffe_rst: ModuleType) -> None:
        """A warning inside a parameter description stays inside that description."""
        source = docstring(
            """
            Args:
                allow_wildcards: Accept ``*``.

                    .. warning::
                        A bare ``*`` is administrator access.
            """
        )

        expected = (
            "Args:\n    allow_wildcards: Accept ``*``.\n\n"
            "        !!! warning\n            A bare ``*`` is administrator access."
        )
        assert expected == griffe_rst.convert(source)

    def test_version_directive_becomes_a_sentence(self, griffe_rst: ModuleType) -> None:
        """``.. versionadded:: X`` becomes an italic line naming the version."""
        assert "*Added in version 0.1.0.*" == griffe_rst.convert(".. versionadded:: 0.1.0")

    def test_example_literal_block_becomes_a_fenced_section(self, griffe_rst: ModuleType) -> None:
        """``Example::`` and its indented block become an Example section with Python code."""
        source = docstring(
            """
            Collect events.

            Example::

                with capture_events() as events:
                    client.get("/")
            """
        )

        expected = (
            "Collect events.\n\nExample:\n    ```python\n"
            "    with capture_events() as events:\n"
            '        client.get("/")\n    ```'
        )
        assert expected == griffe_rst.convert(source)

    def test_literal_block_after_a_sentence_becomes_a_fence(self, griffe_rst: ModuleType) -> None:
        """A paragraph ending in ``::`` keeps its text with one colon, followed by the code."""
        source = docstring(
            """
            Pass this class as uvicorn's ``http`` option::

                uvicorn.run(app, http=ZeroTrustH11Protocol)

            The extension is read once per connection.
            """
        )

        expected = (
            "Pass this class as uvicorn's ``http`` option:\n\n```python\n"
            "uvicorn.run(app, http=ZeroTrustH11Protocol)\n```\n\n"
            "The extension is read once per connection."
        )
        assert expected == griffe_rst.convert(source)

    def test_plain_docstring_is_unchanged(self, griffe_rst: ModuleType) -> None:
        """A docstring without directives passes through as it is."""
        source = "Return the key.\n\nArgs:\n    kid: The key id.\n\nReturns:\n    The key."

        assert source == griffe_rst.convert(source)
