"""Declared preprocessing, and the one function that applies it.

The device, the packer (calibration, self-test, drift reference) and the
trainer all turn raw samples into the model's input tensor through
:func:`prepare`, so a model sees exactly the same numbers wherever it runs.
Pure numpy: the agent imports it and has nothing else to install.

The steps, in order (each skipped when not declared):

1. **image**: raw images are ``(h, w, c)`` (or ``(n, h, w, c)``) in any size;
   they are converted to the declared channel count and resized to the model's
   ``height x width`` (bilinear or nearest).  Decoding a file (PNG/JPEG) is the
   caller's edge (:func:`decode_image`, which needs Pillow).
2. **scale / offset**: ``x * scale + offset`` per raw feature or as scalars
   (format-1 packages declare only this step).
3. **mean / std**: ``(x - mean) / std`` per channel, the last raw axis.
4. **layout**: raw images are channel-last; ``layout = "nchw"`` transposes
   them for models that read channel-first (what ``torch.onnx.export`` writes).
5. **reshape and cast** to the tensor's shape and dtype (int8/uint8 through
   the tensor's quantization parameters, integer types by rounding).
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    model_serializer,
    model_validator,
)

from .errors import InputRejected, ModelError

Floats = float | Annotated[list[float], Field(min_length=1, max_length=65536)]
FeatureName = Annotated[str, StringConstraints(min_length=1, max_length=128)]
_INT_RANGE = {"int8": (-128, 127), "uint8": (0, 255)}
MAX_IMAGE_PIXELS = 4096 * 2048
"""An image with more pixels is refused from its header, before it is decoded: a small
PNG can inflate to gigabytes, and a device has little memory to spare (a 4K photo fits)."""


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class ImageInput(_Closed):
    """The input is an image: raw samples are ``(h, w, c)`` arrays or encoded files."""

    height: Annotated[int, Field(ge=1, le=8192)]
    width: Annotated[int, Field(ge=1, le=8192)]
    channels: Literal[1, 3]
    resize: Literal["bilinear", "nearest", "antialias"] = "bilinear"
    """``antialias``: bilinear whose filter widens with the shrink factor, as Pillow's
    ``resize(BILINEAR)`` and torchvision's ``antialias=True`` do (what a model trained on
    images those libraries shrank saw); plain ``bilinear`` samples 2x2 pixels only."""


class Preprocessing(_Closed):
    """What turns a raw sample into the model's input (see the module docstring)."""

    scale: Floats = 1.0
    offset: Floats = 0.0
    mean: Annotated[list[float], Field(min_length=1, max_length=4096)] | None = None
    std: (
        Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=1, max_length=4096)] | None
    ) = None
    layout: Literal["nchw", "nhwc"] | None = None
    """The model's image layout; raw images are always channel-last (``nhwc``)."""
    image: ImageInput | None = None
    features: Annotated[list[FeatureName], Field(min_length=1, max_length=65536)] | None = None
    """Names of tabular features in the order the model reads them (CSV columns are
    matched by these names)."""

    @model_validator(mode="after")
    def _consistent(self) -> Preprocessing:
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std are declared together")
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ValueError("mean and std need one value per channel each")
        if self.layout is not None and self.image is None:
            raise ValueError("layout applies to image inputs; declare image as well")
        if (
            self.image is not None
            and self.mean is not None
            and len(self.mean) != self.image.channels
        ):
            raise ValueError(f"mean/std need {self.image.channels} values, one per channel")
        if self.features is not None and len(set(self.features)) != len(self.features):
            raise ValueError("feature names must be unique")
        return self

    @model_serializer(mode="wrap")
    def _compact(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Undeclared steps are left out, so a format-1 manifest is written exactly as
        before and an agent that knows only scale and offset still reads it."""
        doc: dict[str, Any] = handler(self)
        return {k: v for k, v in doc.items() if v is not None or k in ("scale", "offset")}

    @property
    def is_identity(self) -> bool:
        return self == Preprocessing()

    def apply(self, raw: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Raw rows ``(n, features)`` -> preprocessed float32 rows (steps 2 and 3 only).

        What the trainer and the reference builder feed a float network: the same
        arithmetic, in the same float32, as :func:`prepare` on the device.
        """
        x = np.asarray(raw, dtype=np.float32)
        return np.asarray(Scaler(self, tuple(x.shape[1:]))(x), dtype=np.float32)


def raw_shape(prep: Preprocessing, model_shape: Sequence[int]) -> tuple[int, ...]:
    """The shape of one raw sample (no batch axis) for a tensor of ``model_shape``."""
    if prep.image is not None:
        return (prep.image.height, prep.image.width, prep.image.channels)
    return tuple(model_shape[1:]) if _batched(model_shape) else tuple(model_shape)


def _batched(shape: Sequence[int]) -> bool:
    return len(shape) > 0 and shape[0] == -1


def prepare(
    raw: npt.ArrayLike,
    prep: Preprocessing,
    *,
    shape: Sequence[int],
    dtype: str,
    quantization: tuple[float, int] | None = None,
    name: str = "input",
) -> npt.NDArray[Any]:
    """Raw samples -> the runtime tensor for an input of ``shape`` (``-1`` batch) and ``dtype``.

    Raises :class:`InputRejected` for input a caller got wrong, naming ``name``.
    """
    plan = InputPlan(prep, shape=shape, dtype=dtype, quantization=quantization, name=name)
    return plan.tensor(plan.canonical(raw))


def canonical(
    raw: npt.ArrayLike, prep: Preprocessing, *, shape: Sequence[int], name: str = "input"
) -> npt.NDArray[np.float32]:
    """Raw samples as float32 ``(n, *raw_shape)``: images converted and resized, rows
    reshaped.  This is what drift statistics describe (a tensor without a batch axis
    comes back as one sample, ``n = 1``)."""
    return InputPlan(prep, shape=shape, dtype="float32", name=name).canonical(raw)


def to_tensor(
    x: npt.NDArray[np.float32],
    prep: Preprocessing,
    *,
    shape: Sequence[int],
    dtype: str,
    quantization: tuple[float, int] | None = None,
    name: str = "input",
) -> npt.NDArray[Any]:
    """Canonical samples (from :func:`canonical`) -> the runtime tensor."""
    plan = InputPlan(prep, shape=shape, dtype=dtype, quantization=quantization, name=name)
    return plan.tensor(x)


class InputPlan:
    """The declared preprocessing of one input, worked out once for its tensor.

    Everything that depends only on the manifest is settled here: the raw and tensor
    shapes, the fused ``x * gain + bias`` factors (already in channel-first order for an
    ``nchw`` model, so the transpose and the arithmetic are one pass), the int8 grid.
    A call then does the arithmetic and the checks and nothing else.  The device makes
    one per input when it loads a model; :func:`prepare`, :func:`canonical` and
    :func:`to_tensor` make one per batch, so the packer, the trainer and the device run
    the same code on the same numbers.
    """

    __slots__ = (
        "_bias",
        "_finite",
        "_gain",
        "_per",
        "_quant",
        "_tail",
        "batched",
        "dtype",
        "image",
        "name",
        "nchw",
        "raw",
        "shape",
    )

    def __init__(
        self,
        prep: Preprocessing,
        *,
        shape: Sequence[int],
        dtype: str,
        quantization: tuple[float, int] | None = None,
        name: str = "input",
    ) -> None:
        self.shape = tuple(int(d) for d in shape)
        self.dtype = dtype
        self.name = name
        self.image = prep.image
        self.raw = raw_shape(prep, self.shape)
        self.batched = _batched(self.shape)
        self._per = math.prod(self.raw)
        self.nchw = prep.image is not None and prep.layout == "nchw"
        scaler = Scaler(prep, self.raw)
        self._gain = self._channel_first(scaler.gain)
        self._bias = self._channel_first(scaler.bias)
        self._finite = _finite_integers(scaler)
        rest = self.shape[1:]
        self._tail = rest if self.batched and -1 not in rest else None
        self._quant: tuple[np.float32, int, int, int] | None = None
        if dtype in _INT_RANGE:
            if quantization is None:
                raise ModelError(f"an {dtype} input needs quantization parameters")
            self._quant = (np.float32(quantization[0]), quantization[1], *_INT_RANGE[dtype])

    def _channel_first(self, factor: Any) -> Any:
        """A gain or bias for raw ``(h, w, c)`` samples, laid out for ``(c, h, w)`` ones."""
        if factor is None or not self.nchw or np.ndim(factor) == 0:
            return factor
        if np.ndim(factor) == 1:  # one value per channel (mean/std)
            return np.asarray(factor, dtype=np.float32).reshape(-1, 1, 1)
        full = np.broadcast_to(np.asarray(factor, dtype=np.float32), self.raw)
        return np.ascontiguousarray(full.transpose(2, 0, 1))

    def canonical(self, raw: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """See :func:`canonical`."""
        return self.samples(raw).astype(np.float32, copy=False)

    def samples(self, raw: npt.ArrayLike) -> npt.NDArray[Any]:
        """Like :meth:`canonical`, except that an image of 8- or 16-bit integers (a camera's
        uint8 pixels) needing no conversion or resizing keeps its dtype: :meth:`tensor`
        converts it within its arithmetic, so the float32 copy is skipped and the tensor
        holds the same numbers."""
        name = self.name
        x = _as_numbers(raw, name)
        if self.image is not None:
            return _images(x, self.image, name)
        want, per = self.raw, self._per
        if x.size == per and x.ndim <= max(len(want), 1):
            x = x.reshape(1, *want)
        elif self.batched and x.ndim >= 2 and x.shape[0] * per == x.size:
            x = x.reshape(x.shape[0], *want)
        else:
            expected = f"(rows, {', '.join(map(str, want))})" if self.batched else str(want)
            raise InputRejected(f"input {name!r} has shape {x.shape}; expected {expected}")
        return x.astype(np.float32, copy=False)

    def tensor(self, x: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Canonical samples ``(n, *raw)`` (from :meth:`canonical` or :meth:`samples`) ->
        the runtime tensor."""
        x = np.asarray(x)
        finite = x.dtype in self._finite
        if not finite and x.dtype != _FLOAT32:
            x = x.astype(np.float32)
        n = x.shape[0]
        if self.nchw:
            x = x.transpose(0, 3, 1, 2)
        gain, bias = self._gain, self._bias
        # dtype=float32: an integer image is converted exactly and computed in float32, as
        # its float32 copy would be (without it numpy 1.x may pick a float16 loop).
        if gain is not None:
            x = np.multiply(x, gain, out=np.empty(x.shape, np.float32), dtype=np.float32)
            if bias is not None:
                np.add(x, bias, out=x)
        elif bias is not None:
            x = np.add(x, bias, out=np.empty(x.shape, np.float32), dtype=np.float32)
        elif self.nchw or x.dtype != _FLOAT32:
            x = np.ascontiguousarray(x, dtype=np.float32)
        if not finite and not _all_finite(x):
            raise InputRejected(f"input {self.name!r} has NaN or infinite values")
        if self.batched:
            if self._tail is not None and x.shape[1:] != self._tail:
                x = x.reshape(n, *self._tail)
        else:
            if n != 1:
                raise InputRejected(f"input {self.name!r} takes one sample per call, got {n}")
            x = x.reshape(self.shape)
        return self._cast(x)

    def _cast(self, x: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
        dtype = self.dtype
        if dtype == "float32":
            return x
        if self._quant is not None:
            scale, zero, lo, hi = self._quant
            return np.asarray(np.clip(np.rint(x / scale) + zero, lo, hi), dtype=dtype)
        if dtype == "bool":
            return np.asarray(x != 0)
        return np.asarray(np.rint(x), dtype=dtype)


_FLOAT32 = np.dtype(np.float32)
_SMALL_INTEGERS: dict[np.dtype[Any], int] = {
    np.dtype(t): max(-int(np.iinfo(t).min), int(np.iinfo(t).max))
    for t in (np.uint8, np.int8, np.uint16, np.int16)
}
"""Integer types float32 holds exactly (whose arithmetic with float32 numpy does in float32),
each with its largest magnitude."""


def _finite_integers(scaler: Scaler) -> frozenset[np.dtype[Any]]:
    """The small integer types whose every value stays finite through ``x * gain + bias``:
    samples of these need no NaN/infinity check (all of them, unless a gain is ~1e33)."""
    gain = 1.0 if scaler.gain is None else float(np.max(np.abs(scaler.gain)))
    bias = 0.0 if scaler.bias is None else float(np.max(np.abs(scaler.bias)))
    limit = float(np.finfo(np.float32).max) / 2  # room for float32 rounding
    return frozenset(t for t, most in _SMALL_INTEGERS.items() if most * gain + bias < limit)


def _all_finite(x: npt.NDArray[np.float32]) -> bool:
    """Whether every value is finite.  A sum is finite only when every term is, so one
    reduction answers for nearly every input; a sum that overflows is checked exactly.
    A few values (a sensor row) are summed in Python floats instead: a float64 sum of
    float32 values cannot overflow, and right after a model call numpy's reduction
    machinery, gone cold, cost ~45 µs against ~15 for this."""
    if x.size <= 64:
        return math.isfinite(sum(x.ravel().tolist()))
    return math.isfinite(np.add.reduce(x, axis=None)) or bool(np.isfinite(x).all())


def _as_numbers(raw: npt.ArrayLike, name: str) -> npt.NDArray[Any]:
    try:
        x = np.asarray(raw)
    except (ValueError, TypeError) as exc:
        raise InputRejected(f"input {name!r} is not a numeric array: {exc}") from exc
    if x.dtype.kind not in "fiub":
        raise InputRejected(f"input {name!r} must be numbers, got dtype {x.dtype}")
    if x.dtype.kind == "f" and x.dtype != np.float32:
        with np.errstate(over="ignore"):  # out-of-range values become inf, refused later
            x = x.astype(np.float32)
    return x


class Scaler:
    """Steps 2 and 3 (scale/offset, mean/std) compiled once for samples of ``shape``.

    ``(x * scale + offset - mean) / std`` becomes ``x * gain + bias``; a multiply by one
    or an add of zero is skipped (the only difference an add of +0.0 makes is turning
    -0.0 into +0.0, which no layer can tell apart).  Format-1 packages declare scale and
    offset only, so their arithmetic is exactly ``x * scale + offset`` as before.
    """

    __slots__ = ("bias", "gain")

    def __init__(self, prep: Preprocessing, shape: Sequence[int]) -> None:
        want = tuple(shape)
        gain = self._factor(prep.scale, want)
        bias = self._factor(prep.offset, want)
        if prep.mean is not None and prep.std is not None:
            std = np.asarray(prep.std, dtype=np.float32)
            if not want or want[-1] != std.size:
                raise ModelError(f"mean/std have {std.size} channels, the input has {want}")
            gain = gain / std
            bias = (bias - np.asarray(prep.mean, dtype=np.float32)) / std
        self.gain = None if bool((gain == 1.0).all()) else gain
        self.bias = None if bool((bias == 0.0).all()) else bias

    @staticmethod
    def _factor(value: float | list[float], want: tuple[int, ...]) -> Any:
        if not isinstance(value, list):
            return np.float32(value)
        factor = np.asarray(value, dtype=np.float32)
        if factor.size != math.prod(want):
            raise ModelError(f"preprocessing has {factor.size} values for {want} per sample")
        return factor.reshape(want)

    def __call__(self, x: Any) -> Any:
        if self.gain is not None:
            x = x * self.gain
        if self.bias is not None:
            x = x + self.bias
        return x


# ------------------------------------------------------------------ images ----


def _images(x: npt.NDArray[Any], image: ImageInput, name: str) -> npt.NDArray[Any]:
    """``(h, w[, c])`` or ``(n, h, w, c)`` -> ``(n, height, width, channels)``: float32, or
    the small integers it came in when it needs no conversion (see InputPlan.samples)."""
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise InputRejected(
            f"input {name!r} is an image: send (height, width, channels) or an image file, "
            f"got shape {x.shape}"
        )
    if x.shape[1] * x.shape[2] > MAX_IMAGE_PIXELS:
        raise InputRejected(f"input {name!r}: image of {x.shape[1]}x{x.shape[2]} is too large")
    if x.shape[-1] == 4:
        x = x[..., :3]
    as_is = x.shape[1:] == (image.height, image.width, image.channels)
    if as_is and x.dtype in _SMALL_INTEGERS:
        return x  # converted by InputPlan.tensor, or by canonical()
    x = x.astype(np.float32, copy=False)
    if image.channels == 1 and x.shape[-1] == 3:
        x = (x @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    elif image.channels == 3 and x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    if x.shape[1:3] != (image.height, image.width):
        x = resize(x, image.height, image.width, image.resize)
    return x


def resize(
    x: npt.NDArray[np.float32], height: int, width: int, method: str = "bilinear"
) -> npt.NDArray[np.float32]:
    """Resize ``(n, h, w, c)`` images; bilinear uses half-pixel centres (as PIL and torch do)."""
    _, h, w, _ = x.shape
    if method == "antialias":
        return _filtered(_filtered(x, 1, height), 2, width)
    if method == "nearest":
        rows = np.minimum((np.arange(height) + 0.5) * h / height, h - 1).astype(np.intp)
        cols = np.minimum((np.arange(width) + 0.5) * w / width, w - 1).astype(np.intp)
        return np.ascontiguousarray(x[:, rows][:, :, cols])
    ys = np.clip((np.arange(height) + 0.5) * h / height - 0.5, 0, h - 1)
    xs = np.clip((np.arange(width) + 0.5) * w / width - 0.5, 0, w - 1)
    y0 = np.floor(ys).astype(np.intp)
    x0 = np.floor(xs).astype(np.intp)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy = (ys - y0).astype(np.float32)[None, :, None, None]
    wx = (xs - x0).astype(np.float32)[None, None, :, None]
    top = x[:, y0][:, :, x0] * (1 - wx) + x[:, y0][:, :, x1] * wx
    bottom = x[:, y1][:, :, x0] * (1 - wx) + x[:, y1][:, :, x1] * wx
    return np.asarray(top * (1 - wy) + bottom * wy, dtype=np.float32)


def _filtered(x: npt.NDArray[np.float32], axis: int, size: int) -> npt.NDArray[np.float32]:
    """Resample ``axis`` to ``size`` with the triangle filter, its support widened by the
    shrink factor and its weights renormalised at the borders (Pillow's algorithm).  The
    weights are banded, so each output sums a few taps: no dense (size x n) matrix, which
    for a phone photo would be a hundred times the work."""
    n = x.shape[axis]
    if n == size:
        return x
    scale = n / size
    support = max(scale, 1.0)
    centre = (np.arange(size) + 0.5) * scale
    first = np.floor(centre - support).astype(np.intp)
    taps = first[:, None] + np.arange(int(np.ceil(2 * support)) + 2)[None, :]
    weight = np.maximum(0.0, 1.0 - np.abs(taps + 0.5 - centre[:, None]) / support)
    weight[(taps < 0) | (taps >= n)] = 0.0
    weight /= weight.sum(axis=1, keepdims=True)
    index = np.clip(taps, 0, n - 1)
    shape = [1] * x.ndim
    shape[axis] = size
    out = np.zeros((*x.shape[:axis], size, *x.shape[axis + 1 :]), dtype=np.float32)
    for k in range(taps.shape[1]):
        w = weight[:, k].astype(np.float32).reshape(shape)
        out += np.take(x, index[:, k], axis=axis) * w
    return out


def decode_image(data: bytes, *, max_bytes: int = 32 * 1024 * 1024) -> npt.NDArray[np.uint8]:
    """An encoded image (PNG, JPEG, ...) as ``(h, w, c)`` uint8; needs Pillow."""
    if len(data) > max_bytes:
        raise InputRejected(f"image file of {len(data)} bytes is over the {max_bytes} byte limit")
    try:
        from PIL import Image
    except ImportError as exc:
        raise InputRejected(
            "decoding image files needs Pillow, which is not installed: "
            "pip install 'edgefleet[images]' (or pip install pillow); "
            "or send the pixels as an array"
        ) from exc
    try:
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            if width * height > MAX_IMAGE_PIXELS:
                raise InputRejected(
                    f"image of {width}x{height} pixels is over the {MAX_IMAGE_PIXELS}-pixel "
                    "limit; scale it down before sending"
                )
            converted = opened.convert("RGB" if opened.mode not in ("L", "I;16", "I") else "L")
            pixels = np.asarray(converted, dtype=np.uint8)
    except InputRejected:
        raise
    except Exception as exc:  # Pillow raises many types for bad files
        raise InputRejected(f"not a readable image file: {exc}") from exc
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def drift_view(raw: npt.NDArray[Any], prep: Preprocessing, mode: str) -> npt.NDArray[np.float64]:
    """The per-sample drift features of raw samples ``(n, *raw)``: every value, or for
    images the mean and standard deviation of each channel (what a camera's drift
    shows in: exposure, white balance, contrast)."""
    x = np.asarray(raw)
    n = x.shape[0]
    if mode == "channels":
        flat = x.reshape(n, -1, x.shape[-1]).astype(np.float64)
        pixels = flat.shape[1]
        # E[x^2] - E[x]^2 in float64: exact enough for 8-bit pixels, and this runs on every
        # served image.  The sums are products with a vector of ones: numpy's reduction
        # over the pixel axis of a (pixels, 3) array is strided and several times slower.
        ones = _ones(pixels)
        total = ones @ flat
        np.multiply(flat, flat, out=flat)
        squares = ones @ flat
        if n == 1:  # one served image
            return _channel_stats(total.tolist()[0], squares.tolist()[0], pixels)
        mean = total / pixels
        var = squares / pixels - mean * mean
        return np.concatenate([mean, np.sqrt(np.maximum(var, 0.0))], axis=1)
    return np.asarray(x.reshape(n, -1), dtype=np.float64)


@functools.lru_cache(maxsize=4)
def _ones(size: int) -> npt.NDArray[np.float64]:
    """A read-only vector of ones, kept for the next image of the same size: making it
    cost ~35 µs per served image on cold caches, as much as the sums it takes."""
    ones = np.ones(size)
    ones.flags.writeable = False
    return ones


def _channel_stats(
    total: list[float], squares: list[float], pixels: int
) -> npt.NDArray[np.float64]:
    """One image's channel means and standard deviations from its sums: the arithmetic of
    the batch path, in Python floats (the same float64 operations, so the same numbers).
    On the CPU caches a model call just went through, the six numpy calls it replaces on
    a few values cost ~50 µs, and a served image is scored on every drift sample kept."""
    mean = [t / pixels for t in total]
    std = [math.sqrt(max(q / pixels - m * m, 0.0)) for q, m in zip(squares, mean, strict=True)]
    return np.array([mean + std])
