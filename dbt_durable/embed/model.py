"""The embedding model behind the local endpoint: wordllama, loaded from its own wheel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MODEL_NAME = "wordllama-l2-supercat"
DIMENSIONS = 256


class Embedder:
    """Unit-length 256-dimension text embeddings; no network is ever used.

    wordllama's default lookup misses the tokenizer file bundled in the wheel and tries to
    download it, so the wheel's folder is given as the cache and downloads are disabled.
    """

    def __init__(self) -> None:
        import wordllama

        self._model = wordllama.WordLlama.load(
            cache_dir=Path(wordllama.__file__).parent, disable_download=True
        )

    def embed(self, texts: list[str], dimensions: int | None = None) -> Any:
        """A float32 array of shape (len(texts), dimensions or 256), each row of unit length.

        A smaller ``dimensions`` keeps the leading components (the model is trained for
        truncation, as OpenAI's ``dimensions`` parameter does) and normalises again.
        """
        import numpy as np

        vectors = self._model.embed(texts, norm=False)
        if dimensions is not None:
            vectors = vectors[:, :dimensions]
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    def count_tokens(self, texts: list[str]) -> int:
        """How many tokens ``texts`` has (reported as ``usage``, as hosted providers bill it)."""
        return sum(len(t) for t in self._model.tokenize(texts))
