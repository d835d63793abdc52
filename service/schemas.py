"""Request and response models: the API's contract and its OpenAPI page.

JSON field names are part of the contract (DESIGN.md section 4): requests use
`images`, `latents`, `labels`, `model`, `dataset`, `factor`, `n`, `seed`,
`temperature`, `label`; responses put images under `images`, latents under
`latents` (and `logvar`). Every field but the data has a default.

Speed: big arrays (`images`, `latents`) are typed `Any` with a hand-written JSON
schema, so pydantic neither walks nor copies 200,000 floats; `service.codecs`
turns them into numpy and checks them, naming the field. Request bodies are
parsed by `codecs.loads_request` (`_Request.model_validate_json`): simdjson
writes those arrays straight into numpy buffers, with no Python float per number.

The `*Options` models are the same requests without the array: the `_file`
endpoints read them from the query string.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from service.codecs import loads_request
from service.manifest import Manifest

Dataset = Annotated[
    str,
    Field(description="Training set of the model: `mnist` or `fashion-mnist` (see `/models`)."),
]
EncoderModel = Literal["ae", "vae", "vae2d", "cvae"]
GenerativeModel = Literal["vae", "vae2d", "cvae"]
Format = Annotated[
    Literal["json", "png", "npy"] | None,
    Field(
        description="Response format. Default: the `Accept` header (`image/png`, "
        "`application/x-npy`), else JSON. PNG is one image or a grid of all."
    ),
]
LatentFormat = Annotated[
    Literal["json", "npy"] | None,
    Field(description="Response format: JSON (default) or `.npy` of the latent means."),
]


def _numbers(depth: int) -> dict:
    schema: dict = {"type": "number"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


ImageArray = Annotated[
    Any,
    WithJsonSchema(
        {
            "description": "Greyscale images, pixels in [0,1]: `[N,H,W]`, one image `[H,W]`, "
            "flattened `[N,784]` or `[N,1,H,W]`.",
            "anyOf": [_numbers(3), _numbers(2), _numbers(4)],
        }
    ),
]
LatentArray = Annotated[
    Any,
    WithJsonSchema(
        {
            "description": "Latent codes `[N,d]` (or one `[d]`); d is the model's `latent_dim`.",
            "anyOf": [_numbers(2), _numbers(1)],
        }
    ),
]


def _csv_ints(value: Any) -> Any:
    """Query strings carry `labels=1,2,3`; JSON carries lists. Both end as lists."""
    if isinstance(value, str):
        try:
            return [int(v) for v in value.split(",") if v.strip()]
        except ValueError:
            return value  # let pydantic report it
    return value


Labels = Annotated[
    list[int] | int | None,
    BeforeValidator(_csv_ints),
    Field(description="cvae only: one class index per row, or one for all rows."),
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    _arrays: ClassVar[frozenset[str]] = frozenset({"images", "latents"})

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **kwargs: Any) -> Any:
        """Fast parse (`codecs.loads_request`) + python-mode validation; malformed JSON
        gets pydantic's own error."""
        try:
            data = loads_request(json_data, cls._arrays)
        except ValueError:
            return super().model_validate_json(json_data, **kwargs)
        return cls.model_validate(data, **kwargs)


# ------------------------------------------------------------------ requests


class EncodeOptions(_Request):
    model: EncoderModel = Field("ae", description="Which encoder.")
    dataset: Dataset = "mnist"
    labels: Labels = None
    format: LatentFormat = None


class EncodeRequest(EncodeOptions):
    """Images -> latent codes. Images must be 28x28 (files sent to `/encode_file` are resized)."""

    images: ImageArray


class DecodeOptions(_Request):
    model: EncoderModel = Field("ae", description="Which decoder.")
    dataset: Dataset = "mnist"
    labels: Labels = None
    format: Format = None


class DecodeRequest(DecodeOptions):
    """Latent codes -> images."""

    latents: LatentArray


class DenoiseOptions(_Request):
    model: Literal["denoiser"] = Field("denoiser", description="The one denoiser.")
    dataset: Dataset = "mnist"
    format: Format = None


class DenoiseRequest(DenoiseOptions):
    """Noisy images of any size up to the side limit -> clean images of the same size."""

    images: ImageArray


class UpscaleOptions(_Request):
    factor: Literal[2, 4] = Field(2, description="Upscaling factor: 2 or 4.")
    dataset: Dataset = "mnist"
    format: Format = None


class UpscaleRequest(UpscaleOptions):
    """Images -> images `factor` times larger in each direction."""

    images: ImageArray


class GenerateRequest(_Request):
    """Sample new images: `n` draws of z ~ N(0, temperature^2 I) with `seed`, decoded.

    Or decode an explicit list of `latents`, or (2-D models such as `vae2d`) a
    `grid` x `grid` map of the latent square [-2T, 2T]^2, T = temperature.
    """

    n: int = Field(16, ge=1, description="How many images (limit: `max_n` in `/models`).")
    seed: int | None = Field(
        None,
        ge=0,
        le=2**63 - 1,
        description="Same seed, same images. Omitted: a random seed, returned in the answer. "
        "z = numpy.random.default_rng(seed).standard_normal((n, d)) * temperature.",
    )
    temperature: float = Field(
        1.0, ge=0.0, le=10.0, allow_inf_nan=False, description="Scale of the latent prior."
    )
    model: GenerativeModel = Field("vae", description="Which generative model.")
    dataset: Dataset = "mnist"
    label: int | None = Field(
        None, ge=0, description="cvae: the class to draw (default: 0,1,2...)."
    )
    latents: LatentArray | None = None
    grid: int | None = Field(
        None, ge=2, le=64, description="2-D models: decode a grid x grid latent map instead."
    )
    format: Format = None


class ModelsRequest(_Request):
    """No fields."""


# ------------------------------------------------------------------ responses


class EncodeResponse(BaseModel):
    latents: list[list[float]] = Field(description="`[N,d]` latent codes (means for VAEs).")
    logvar: list[list[float]] | None = Field(None, description="`[N,d]` log-variances (VAEs only).")


class ImagesResponse(BaseModel):
    images: list[list[list[float]]] = Field(description="`[N,H,W]`, pixels in [0,1].")


class GenerateResponse(ImagesResponse):
    latents: list[list[float]] = Field(description="The `[N,d]` latents that were decoded.")
    labels: list[int] | None = Field(None, description="cvae: the class of each image.")
    seed: int | None = Field(None, description="The seed used (absent for latents/grid).")


class ModelsResponse(Manifest):
    """The manifest as served, plus the request limits of this deployment."""

    limits: dict[str, int] = Field(default_factory=dict)


class ErrorDetail(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorResponse(BaseModel):
    """Every 4xx answer: `error` says it in one line, `detail[].loc` names the field."""

    error: str
    detail: list[ErrorDetail] = []
