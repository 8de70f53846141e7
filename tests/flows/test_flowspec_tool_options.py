"""Loader checks for tool options the runtime reads: knowledge_search ``documents``."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.flows.format import FlowValidationError, load_flow


def write(tmp_path: Path, tools: str) -> Path:
    path = tmp_path / "t.yaml"
    path.write_text(
        "bot: {name: t}\npersona: p\n"
        f"tools:\n{tools}"
        "nodes: {a: {instructions: A., tools: [kb]}}\n"
    )
    return path


def test_documents_folder_is_kept_relative_to_the_flow(tmp_path) -> None:
    (tmp_path / "docs").mkdir()
    spec = load_flow(
        write(
            tmp_path, "  - {name: kb, kind: builtin, builtin: knowledge_search, documents: docs}\n"
        )
    )
    assert spec.tools["kb"].documents == "docs"


def test_missing_documents_folder_is_reported(tmp_path) -> None:
    with pytest.raises(FlowValidationError) as e:
        load_flow(
            write(
                tmp_path,
                "  - {name: kb, kind: builtin, builtin: knowledge_search, documents: nope}\n",
            )
        )
    (issue,) = e.value.issues
    assert issue.path == "tools[0].documents"
    assert issue.message.startswith("documents folder 'nope' not found (looked for ")


def test_documents_only_for_knowledge_search(tmp_path) -> None:
    (tmp_path / "docs").mkdir()
    with pytest.raises(FlowValidationError) as e:
        load_flow(
            write(tmp_path, "  - {name: kb, kind: builtin, builtin: end_call, documents: docs}\n")
        )
    assert [i.message for i in e.value.issues] == [
        "documents is only for the knowledge_search built-in"
    ]
    with pytest.raises(FlowValidationError, match="unknown key 'documents'"):
        load_flow(
            write(
                tmp_path,
                "  - {name: kb, kind: python, description: d, handler: 'a:b', documents: docs}\n",
            )
        )
