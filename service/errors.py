"""Domain errors raised below the HTTP layer.

Everything that can go wrong because of what a client sent is a `ServiceError`
carrying the request field it concerns, a human sentence and the HTTP status the
edge (`service.service`) should answer with. Codecs, the registry and the
inference engine raise these; only `service.service` turns them into responses,
so the lower layers stay usable from a batch job or a test without HTTP.
"""

from __future__ import annotations


class ServiceError(Exception):
    """A problem with a request, attributable to one field."""

    status: int = 400
    kind: str = "bad_input"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def to_dict(self) -> dict:
        """The JSON error body: BentoML's validation-error shape, so clients parse one format."""
        return {
            "error": str(self),
            "detail": [{"loc": [self.field], "msg": self.message, "type": self.kind}],
        }


class BadInput(ServiceError):  # noqa: N818 (domain names read better)
    """Wrong shape, wrong size, NaN/inf, out of range, unreadable file..."""


class TooLarge(ServiceError):  # noqa: N818 (domain names read better)
    """Batch, `n`, image side or pixel count over a configured limit."""

    status = 413
    kind = "too_large"


class UnknownDataset(ServiceError):  # noqa: N818 (domain names read better)
    """The request names a dataset that no served model was trained on."""

    status = 404
    kind = "unknown_dataset"


class UnknownModel(ServiceError):  # noqa: N818 (domain names read better)
    """The request names a model that is not served for that dataset."""

    status = 404
    kind = "unknown_model"
