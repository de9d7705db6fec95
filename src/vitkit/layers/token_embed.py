"""Token embeddings whose out-of-range ids are named, not an ``IndexError: index out of range in self``."""

from __future__ import annotations

from torch import Tensor, nn

from .attention import may_inspect_values

__all__ = ["TokenEmbedding"]


class TokenEmbedding(nn.Embedding):
    """:class:`torch.nn.Embedding` (same parameters, same state-dict keys) for ids of a vocabulary.

    ``forward(ids (...) int64) -> (..., embedding_dim)``. An id outside ``[0, num_embeddings)`` raises a
    ``ValueError`` naming the ids' range and the table's size, e.g. a tokenizer whose vocabulary is larger than
    the model's. Only where PyTorch raises: on CUDA an out-of-range id is a device-side assert, as in
    ``nn.Embedding``; the happy path costs nothing (no check of the ids' values, no device sync).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 what: str = "token ids") -> None:  # fmt: skip
        super().__init__(num_embeddings, embedding_dim, padding_idx=padding_idx)
        self.what = what

    def forward(self, ids: Tensor) -> Tensor:
        # compiling, exporting, tracing: no Python exception handling in the graph
        if not may_inspect_values():
            return super().forward(ids)
        try:
            return super().forward(ids)
        except IndexError:
            if ids.numel() == 0 or ids.is_floating_point():
                raise
            low, high = int(ids.min()), int(ids.max())
            raise ValueError(
                f"{self.what} run from {low} to {high}; the model has {self.num_embeddings} (ids 0 to "
                f"{self.num_embeddings - 1}): is the tokenizer the model's?"
            ) from None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, what={self.what!r}"
