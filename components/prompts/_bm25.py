"""A BM25 paragraph index over a user corpus, built once and cached on disk under a content key.

The corpus is a file (.txt paragraphs separated by blank lines, .jsonl/.json/.csv/.parquet records with a text
field) or a directory of such files. Documents are cut into paragraphs of ``chunk_sentences`` sentences (as
Lazaridou et al. chunk web documents into 6-sentence paragraphs) and indexed with ``bm25s``
(https://github.com/xhluca/bm25s). The cache directory holds only files written here: bm25s's own ``save`` (numpy
arrays written and read with ``allow_pickle=False``, JSON vocabulary and parameters) and ``paragraphs.json``; the
key hashes the corpus content, the chunking and the BM25 parameters, so a changed corpus gets a new index.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import data as data_sources

FORMAT = 1
SUFFIXES = (*data_sources.FILE_SUFFIXES, ".md")  # .md files are read as plain text, like .txt
_LOCK = threading.Lock()
_LOADED: dict[str, "Index"] = {}


@dataclass
class Index:
    """A loaded index: its key, paragraphs and bm25s retriever."""

    key: str
    paragraphs: list[str]
    retriever: Any
    built: bool  # True when this call built it (False: read from the disk cache or memory)

    def search(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        """Top-``k`` (paragraph index, BM25 score) per query, best first (fewer when the corpus is smaller)."""
        import bm25s

        k = min(k, len(self.paragraphs))
        tokens = bm25s.tokenize(queries, stopwords="en", show_progress=False, return_ids=False)
        tokens = [t if t else ["\x00"] for t in tokens]  # a query of stopwords only: retrieve by a blank token
        docs, scores = self.retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        return [[(int(d), float(s)) for d, s in zip(drow, srow)] for drow, srow in zip(docs, scores)]


def corpus_files(corpus: str) -> list[Path]:
    """The files of a corpus (one file, or every supported file under a directory, sorted)."""
    path = Path(corpus).expanduser()
    if path.is_file():
        if path.suffix.lower() not in SUFFIXES:
            raise data_sources.DataSourceError(f"corpus {corpus!r}: unsupported file type; use {'/'.join(SUFFIXES)}")
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        if files:
            return files
        raise data_sources.DataSourceError(f"corpus {corpus!r}: no {'/'.join(SUFFIXES)} files")
    raise data_sources.DataSourceError(f"corpus {corpus!r} does not exist (a file or a directory of files)")


def split_paragraphs(text: str, chunk_sentences: int) -> list[str]:
    """``text`` cut into paragraphs of at most ``chunk_sentences`` sentences."""
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if s]
    return [" ".join(sentences[i : i + chunk_sentences]) for i in range(0, len(sentences), chunk_sentences)]


def read_paragraphs(corpus: str, text_field: str, chunk_sentences: int) -> list[str]:
    paragraphs: list[str] = []
    for f in corpus_files(corpus):
        if f.suffix.lower() in (".txt", ".md"):
            texts = [t for t in f.read_text(encoding="utf-8", errors="replace").split("\n\n") if t.strip()]
        else:
            texts = data_sources.texts(data_sources.read_records(str(f)), text_field, str(f))
        for text in texts:
            paragraphs += split_paragraphs(text, chunk_sentences)
    if not paragraphs:
        raise data_sources.DataSourceError(f"corpus {corpus!r} has no text in field {text_field!r}")
    return paragraphs


def index_key(corpus: str, text_field: str, chunk_sentences: int, k1: float, b: float) -> str:
    """Content key: every corpus file's path (relative) and bytes, the chunking and the BM25 parameters."""
    import bm25s

    h = hashlib.sha256(json.dumps([FORMAT, bm25s.__version__, text_field, chunk_sentences, k1, b]).encode())
    root = Path(corpus).expanduser()
    for f in corpus_files(corpus):
        h.update(str(f.relative_to(root) if root.is_dir() else f.name).encode() + b"\0")
        h.update(data_sources.fingerprint(str(f)).encode())
    return h.hexdigest()[:24]


def load_index(corpus: str, cache_dir: Path, *, text_field: str = "text", chunk_sentences: int = 6,
               k1: float = 1.5, b: float = 0.75) -> Index:
    """The index of ``corpus``: from memory, from ``cache_dir/<key>``, or built and saved there."""
    import bm25s

    key = index_key(corpus, text_field, chunk_sentences, k1, b)
    with _LOCK:
        if key in _LOADED:
            return Index(key, _LOADED[key].paragraphs, _LOADED[key].retriever, built=False)
        where = Path(cache_dir) / key
        built = False
        if not (where / "paragraphs.json").is_file():
            paragraphs = read_paragraphs(corpus, text_field, chunk_sentences)
            retriever = bm25s.BM25(k1=k1, b=b)
            retriever.index(bm25s.tokenize(paragraphs, stopwords="en", show_progress=False), show_progress=False)
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{key}-"))
            retriever.save(str(tmp))
            (tmp / "paragraphs.json").write_text(json.dumps({"format": FORMAT, "corpus": str(corpus),
                                                             "paragraphs": paragraphs}))
            try:
                os.replace(tmp, where)
            except OSError:  # another process saved the same key first: keep its copy
                shutil.rmtree(tmp, ignore_errors=True)
            built = True
        meta = json.loads((where / "paragraphs.json").read_text())
        retriever = bm25s.BM25.load(str(where), allow_pickle=False)
        index = Index(key, meta["paragraphs"], retriever, built=built)
        _LOADED[key] = index
        return index


def clear_memory() -> None:
    """Forget indexes loaded in this process (the disk cache stays)."""
    with _LOCK:
        _LOADED.clear()
