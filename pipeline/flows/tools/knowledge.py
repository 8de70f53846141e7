"""Knowledge search: retrieval over a folder of documents with real sentence embeddings.

The folder's ``*.md`` / ``*.txt`` files are split into passages (paragraphs, merged up to
``max_chars``); passages and queries are embedded with MiniLM (``embeddings.py``) and ranked by
cosine similarity. Indexing happens once per folder, off the event loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.flows.tools.embeddings import MiniLMEmbedder, shared_embedder

DOCUMENT_SUFFIXES = (".md", ".txt")


@dataclass(frozen=True)
class Passage:
    """A piece of one document."""

    document: str  # file name relative to the folder
    text: str


@dataclass(frozen=True)
class SearchHit:
    """A passage and its similarity to the query."""

    document: str
    text: str
    score: float


def split_passages(document: str, text: str, max_chars: int = 600) -> list[Passage]:
    """Paragraphs of ``text`` merged into passages of at most ``max_chars`` characters."""
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n")]
    passages: list[Passage] = []
    current = ""
    for para in (p for p in paragraphs if p):
        if current and len(current) + 1 + len(para) > max_chars:
            passages.append(Passage(document, current))
            current = ""
        current = f"{current} {para}".strip()
    if current:
        passages.append(Passage(document, current))
    return passages


class KnowledgeBase:
    """An embedded folder of documents; ``search`` returns the best passages."""

    def __init__(
        self, passages: list[Passage], vectors: np.ndarray, embedder: MiniLMEmbedder
    ) -> None:
        self.passages = passages
        self.vectors = vectors
        self.embedder = embedder

    @classmethod
    def from_folder(cls, folder: Path, embedder: MiniLMEmbedder | None = None) -> KnowledgeBase:
        """Read and embed every document under ``folder`` (blocking)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"knowledge folder not found: {folder}")
        passages: list[Passage] = []
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix.lower() in DOCUMENT_SUFFIXES:
                name = path.relative_to(folder).as_posix()
                passages += split_passages(name, path.read_text(encoding="utf-8"))
        embedder = embedder or shared_embedder()
        vectors = embedder.encode([f"{p.document}: {p.text}" for p in passages])
        return cls(passages, vectors, embedder)

    @classmethod
    async def load(cls, folder: Path) -> KnowledgeBase:
        """``from_folder`` in a worker thread."""
        return await asyncio.to_thread(cls.from_folder, folder)

    def search_sync(self, query: str, k: int = 3) -> list[SearchHit]:
        """The ``k`` passages most similar to ``query`` (blocking)."""
        if not self.passages or not query.strip():
            return []
        q = self.embedder.encode([query])[0]
        scores = self.vectors @ q
        order = np.argsort(-scores)[:k]
        return [
            SearchHit(self.passages[i].document, self.passages[i].text, float(scores[i]))
            for i in order
        ]

    async def search(self, query: str, k: int = 3) -> list[SearchHit]:
        """``search_sync`` in a worker thread."""
        return await asyncio.to_thread(self.search_sync, query, k)
