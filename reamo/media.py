"""The one place that opens user media: images (Pillow), audio (soundfile, PyAV fallback) and video (PyAV).

Everything downstream gets the same normalized arrays (RGB uint8 images, 16 kHz mono float32 audio, sampled RGB
video frames with their timestamps), so no tool has to care about file formats. Formats are recognized from the
content, never from the file extension, and every limit is checked from the header before anything is decoded, so
a hostile or broken file fails fast with a `MediaError` that names the file, the problem and the fix.
"""

from __future__ import annotations

import io
import logging
import math
import os
import struct
from fractions import Fraction
from pathlib import Path
from typing import IO, Any, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, field_validator

from reamo.errors import MediaError

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
"""Every `LoadedAudio` is resampled to this rate (what Whisper and Silero VAD expect)."""

MediaSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]  # noqa: UP007

_IMAGE_FORMATS = "JPEG, PNG, GIF, BMP, TIFF, WebP, PPM/PGM, ICO, TGA (and the other formats Pillow reads)"
_AUDIO_FORMATS = "WAV, FLAC, OGG/Vorbis, Opus, MP3, AIFF (soundfile), plus AAC/M4A and audio tracks in videos (PyAV)"
_VIDEO_FORMATS = "MP4/MOV, WebM/MKV, AVI, animated GIF and the other containers FFmpeg (PyAV) reads"


class MediaLimits(BaseModel):
    """Upper bounds checked before decoding, so one oversized upload cannot exhaust memory or time."""

    model_config = ConfigDict(extra="forbid")

    max_bytes: int = Field(default=200_000_000, gt=0, description="largest file or byte string accepted")
    max_pixels: int = Field(default=40_000_000, gt=0, description="largest width*height of an image/video frame")
    max_audio_seconds: float = Field(default=600.0, gt=0)
    max_video_seconds: float = Field(default=300.0, gt=0)
    max_video_frames: int = Field(default=64, gt=0, description="most frames sampled from one video")
    video_sample_fps: float = Field(default=2.0, gt=0, description="frames per second sampled from a video")


class LoadedImage(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    array: np.ndarray = Field(description="(H, W, 3) uint8 RGB")

    @field_validator("array")
    @classmethod
    def _rgb_uint8(cls, value: np.ndarray) -> np.ndarray:
        if value.ndim != 3 or value.shape[2] != 3 or value.dtype != np.uint8:
            raise ValueError(f"image array must be (H, W, 3) uint8, got {value.shape} {value.dtype}")
        return value

    @property
    def width(self) -> int:
        return int(self.array.shape[1])

    @property
    def height(self) -> int:
        return int(self.array.shape[0])

    def to_pil(self) -> Image.Image:
        return Image.fromarray(self.array, mode="RGB") if _PIL_HAS_MODE_ARG else Image.fromarray(self.array)


class LoadedAudio(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    samples: np.ndarray = Field(description="mono float32 in [-1, 1]")
    sample_rate: int = SAMPLE_RATE

    @field_validator("samples")
    @classmethod
    def _mono_float(cls, value: np.ndarray) -> np.ndarray:
        if value.ndim != 1 or value.dtype != np.float32:
            raise ValueError(f"audio samples must be 1-D float32, got {value.shape} {value.dtype}")
        return value

    @property
    def duration(self) -> float:
        return len(self.samples) / float(self.sample_rate)


class LoadedVideo(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    frames: np.ndarray = Field(description="(N, H, W, 3) uint8 RGB, the sampled frames")
    timestamps: list[float] = Field(description="seconds from the start of the video, one per sampled frame")
    frame_indices: list[int] = Field(description="index of each sampled frame in the original video")
    fps: float = Field(description="native frame rate of the video")
    duration: float = Field(description="seconds")

    @field_validator("frames")
    @classmethod
    def _rgb_uint8(cls, value: np.ndarray) -> np.ndarray:
        if value.ndim != 4 or value.shape[3] != 3 or value.dtype != np.uint8:
            raise ValueError(f"video frames must be (N, H, W, 3) uint8, got {value.shape} {value.dtype}")
        return value

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])


class MediaBundle(BaseModel):
    """The media of one request; grounding tools receive it as their first argument."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    image: LoadedImage | None = None
    audio: LoadedAudio | None = None
    video: LoadedVideo | None = None

    @property
    def modalities(self) -> list[str]:
        return [name for name in ("image", "video", "audio") if getattr(self, name) is not None]

    @classmethod
    def load(
        cls,
        image: MediaSource | None = None,
        audio: MediaSource | None = None,
        video: MediaSource | None = None,
        limits: MediaLimits | None = None,
        *,
        audio_sample_rate: int | None = None,
        video_fps: float | None = None,
    ) -> MediaBundle:
        """Load whichever sources are given (None skips a modality); the keywords only matter for arrays."""
        limits = limits or MediaLimits()
        return cls(
            image=load_image(image, limits) if image is not None else None,
            audio=load_audio(audio, limits, sample_rate=audio_sample_rate) if audio is not None else None,
            video=load_video(video, limits, fps=video_fps) if video is not None else None,
        )


try:  # Pillow 11.3 deprecated the `mode` argument of fromarray; keep one code path that warns on neither.
    _PIL_HAS_MODE_ARG = tuple(int(p) for p in Image.__version__.split(".")[:2]) < (11, 3)
except ValueError:  # pragma: no cover - unusual version strings
    _PIL_HAS_MODE_ARG = False


# ---------------------------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------------------------


class _Blob:
    """A file path or in-memory bytes, after the existence / emptiness / size checks every loader needs."""

    def __init__(self, source: Any, limits: MediaLimits, kind: str) -> None:
        if isinstance(source, (bytes, bytearray, memoryview)):
            self.path: Path | None = None
            self.data: bytes | None = bytes(source)
            self.name = "<bytes>"
            size = len(self.data)
        elif isinstance(source, (str, os.PathLike)):
            self.path = Path(source).expanduser()
            self.data = None
            self.name = str(source)
            if not self.path.exists():
                raise MediaError(f"{self.name}: {kind} file not found; check the path (cwd is {os.getcwd()})")
            if not self.path.is_file():
                raise MediaError(f"{self.name}: is not a regular file; pass the path of a {kind} file")
            try:
                size = self.path.stat().st_size
            except OSError as error:
                raise MediaError(f"{self.name}: cannot read the {kind} file ({error}); check its permissions") from error
        else:
            raise MediaError(
                f"cannot load {kind} from a {type(source).__name__}; pass a file path, bytes"
                + (", a PIL image or a numpy array" if kind != "audio" else " or a numpy array")
            )
        if size == 0:
            raise MediaError(f"{self.name}: the {kind} file is empty (0 bytes); re-export or re-download it")
        if size > limits.max_bytes:
            raise MediaError(
                f"{self.name}: {size / 1e6:.1f} MB exceeds the {limits.max_bytes / 1e6:.1f} MB limit; "
                f"compress the {kind} or raise MediaLimits(max_bytes=...)"
            )
        self.size = size

    def open(self) -> IO[bytes]:
        if self.data is not None:
            return io.BytesIO(self.data)
        try:
            return open(self.path, "rb")  # type: ignore[arg-type]
        except OSError as error:
            raise MediaError(f"{self.name}: cannot open the file ({error}); check its permissions") from error

    def head(self, count: int = 64) -> bytes:
        with self.open() as handle:
            return handle.read(count)


def _sniff(head: bytes) -> str | None:
    """Best guess of what the content is, to turn "cannot decode" into "this is a video, use load_video"."""
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "WAV audio"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "AVI video"
    if head[:4] == b"fLaC":
        return "FLAC audio"
    if head[:4] == b"OggS":
        return "Ogg audio"
    if head[:3] == b"ID3" or head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return "MP3 audio"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        return "M4A audio" if brand in (b"M4A ", b"M4B ") else "MP4/MOV video"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "WebM/Matroska video"
    if head[:4] == b"%PDF":
        return "PDF document"
    if head[:2] == b"PK":
        return "ZIP archive"
    if head[:2] == b"\xff\xd8":
        return "JPEG image"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG image"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF image"
    return None


def _kind_hint(head: bytes, wanted: str) -> str:
    """"; it looks like X (use load_x)" when the content is clearly another kind of media."""
    guess = _sniff(head)
    if guess is None or guess.endswith(wanted):
        return ""
    loader = {"audio": "load_audio / --audio", "video": "load_video / --video", "image": "load_image / --image"}
    other = guess.rsplit(" ", 1)[-1]
    if wanted == "audio" and other == "video":  # video containers often carry the audio track asked for
        return ""
    return f"; the content looks like {guess}" + (f" (use {loader[other]})" if other in loader else "")


# ---------------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------------


def load_image(source: MediaSource, limits: MediaLimits | None = None) -> LoadedImage:
    """Open an image as (H, W, 3) uint8 RGB, upright (EXIF orientation applied), first frame of animations."""
    limits = limits or MediaLimits()
    if isinstance(source, np.ndarray):
        return LoadedImage(name="<array>", array=_image_array(source, "<array>", limits))
    if isinstance(source, Image.Image):
        name = getattr(source, "filename", "") or "<PIL image>"
        _check_pixels(name, source.size, limits)
        return LoadedImage(name=name, array=_to_rgb(ImageOps.exif_transpose(source) or source, name))

    blob = _Blob(source, limits, "image")
    name = blob.name
    with blob.open() as handle:
        try:
            image = Image.open(handle)  # reads the header only
        except UnidentifiedImageError as error:
            raise MediaError(
                f"{name}: unsupported image format{_kind_hint(blob.head(), 'image')}; supported: {_IMAGE_FORMATS}"
            ) from error
        except Image.DecompressionBombError as error:
            raise MediaError(
                f"{name}: refused as a decompression bomb by Pillow ({error}); downscale the image before "
                "loading (MediaLimits(max_pixels=...) cannot lift Pillow's Image.MAX_IMAGE_PIXELS guard)"
            ) from error
        except OSError as error:
            raise MediaError(f"{name}: cannot read the image header ({error}); the file is damaged") from error
        _check_pixels(name, image.size, limits)
        try:
            image.load()
        except Image.DecompressionBombError as error:
            raise MediaError(
                f"{name}: refused as a decompression bomb ({error}); downscale the image before loading"
            ) from error
        except (OSError, SyntaxError, ValueError, struct.error, EOFError) as error:
            raise MediaError(
                f"{name}: the {image.format or ''} image is truncated or corrupt ({error}); "
                "re-export or re-download it"
            ) from error
        try:
            upright = ImageOps.exif_transpose(image) or image
        except (OSError, ValueError, KeyError, TypeError, SyntaxError, struct.error) as error:  # broken EXIF
            logger.warning("%s: ignoring unreadable EXIF orientation (%s)", name, error)
            upright = image
        return LoadedImage(name=name, array=_to_rgb(upright, name))


def _check_pixels(name: str, size: tuple[int, int], limits: MediaLimits) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise MediaError(f"{name}: the image has no pixels ({width}x{height}); re-export it")
    if width * height > limits.max_pixels:
        raise MediaError(
            f"{name}: {width}x{height} = {width * height:,} pixels exceeds the limit of {limits.max_pixels:,} "
            "(decompression-bomb guard); downscale the image or raise MediaLimits(max_pixels=...)"
        )


def _to_rgb(image: Image.Image, name: str) -> np.ndarray:
    """Any Pillow mode -> RGB; transparency is composited over white (transparent pixels are often black)."""
    mode = image.mode
    if mode == "RGB":
        return np.array(image, dtype=np.uint8)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        high = 65535.0 if mode.startswith("I;16") else max(float(array.max()), 1.0)
        low = 0.0 if mode.startswith("I;16") else min(float(array.min()), 0.0)
        gray = np.clip((array - low) / (high - low) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("PA", "LA", "La", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    try:
        return np.array(image.convert("RGB"), dtype=np.uint8)
    except (ValueError, OSError) as error:
        raise MediaError(f"{name}: cannot convert image mode {mode} to RGB ({error}); re-export as RGB") from error


def _image_array(array: np.ndarray, name: str, limits: MediaLimits) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise MediaError(f"{name}: image arrays must be (H, W), (H, W, 3) or (H, W, 4); got shape {array.shape}")
    _check_pixels(name, (array.shape[1], array.shape[0]), limits)
    array = _to_uint8(array, name)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.shape[2] == 4:
        image = Image.fromarray(np.ascontiguousarray(array))
        return _to_rgb(image, name)
    return np.ascontiguousarray(array)


def _to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise MediaError(f"{name}: the array contains NaN or infinity; clean it before loading")
        if array.size and (float(array.min()) < 0.0 or float(array.max()) > 255.0):
            raise MediaError(
                f"{name}: float pixel values {float(array.min()):.3g}..{float(array.max()):.3g} in a "
                f"{array.shape} {array.dtype} array are outside 0..255; scale them to [0, 1] (or 0..255) or "
                "convert to uint8"
            )
        scale = 255.0 if array.size and float(array.max()) <= 1.0 else 1.0
        return np.clip(array * scale + 0.5, 0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 255):
            raise MediaError(
                f"{name}: integer pixel values outside 0..255 ({array.min()}..{array.max()}); "
                "convert to uint8 or to floats in [0, 1]"
            )
        return array.astype(np.uint8)
    raise MediaError(f"{name}: unsupported pixel dtype {array.dtype}; use uint8 or floats in [0, 1]")


# ---------------------------------------------------------------------------------------------------------------
# Audio
# ---------------------------------------------------------------------------------------------------------------


def load_audio(
    source: MediaSource, limits: MediaLimits | None = None, *, sample_rate: int | None = None
) -> LoadedAudio:
    """Open audio as 16 kHz mono float32. `sample_rate` is only used for arrays (default: already 16 kHz)."""
    limits = limits or MediaLimits()
    if isinstance(source, np.ndarray):
        samples = _audio_array(source, "<array>")
        rate = int(sample_rate or SAMPLE_RATE)
        if rate <= 0:
            raise MediaError(f"<array>: sample_rate must be positive, got {sample_rate}")
        _check_audio_length("<array>", len(samples), rate, limits)
        return LoadedAudio(name="<array>", samples=_finish_audio(samples, rate))

    blob = _Blob(source, limits, "audio")
    import soundfile

    try:
        with blob.open() as handle:
            info = soundfile.info(handle)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
        logger.debug("%s: soundfile cannot read it (%s); trying PyAV", blob.name, error)
        return _load_audio_av(blob, limits)
    _check_wav_complete(blob)
    _check_audio_length(blob.name, info.frames, info.samplerate, limits)
    try:
        with blob.open() as handle:
            data, rate = soundfile.read(handle, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError) as error:
        raise MediaError(f"{blob.name}: the audio is corrupt ({error}); re-export or re-download it") from error
    if data.shape[0] == 0:
        raise MediaError(f"{blob.name}: the audio contains no samples (0 s); record or export it again")
    return LoadedAudio(name=blob.name, samples=_finish_audio(data.mean(axis=1), int(rate)))


def _check_audio_length(name: str, frames: int, rate: int, limits: MediaLimits) -> None:
    if frames <= 0 or rate <= 0:
        raise MediaError(f"{name}: the audio contains no samples (0 s); record or export it again")
    seconds = frames / float(rate)
    if seconds > limits.max_audio_seconds:
        raise MediaError(
            f"{name}: {seconds:.1f} s of audio exceeds the {limits.max_audio_seconds:.0f} s limit; "
            "trim it or raise MediaLimits(max_audio_seconds=...)"
        )


def _check_wav_complete(blob: _Blob) -> None:
    """libsndfile silently shortens a cut-off WAV; compare the declared data size with what the file holds."""
    with blob.open() as handle:
        header = handle.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return
        position = 12
        while True:
            handle.seek(position)
            chunk = handle.read(8)
            if len(chunk) < 8:
                return
            chunk_id, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if chunk_id == b"data":
                if size in (0, 0xFFFFFFFF):  # streaming writers leave the size unset; nothing to compare
                    return
                available = blob.size - (position + 8)
                if available < size:
                    raise MediaError(
                        f"{blob.name}: the WAV file is truncated (header declares {size} bytes of samples, the "
                        f"file holds {max(available, 0)}); re-export or re-download it"
                    )
                return
            position += 8 + size + (size & 1)


def _audio_array(array: np.ndarray, name: str) -> np.ndarray:
    """(N,), (N, C) or (C, N) with C <= 8 -> mono float32; integer PCM is scaled to [-1, 1]."""
    if array.ndim == 2:
        channel_axis = 1 if array.shape[1] <= array.shape[0] else 0
        if array.shape[channel_axis] > 8:
            raise MediaError(f"{name}: audio arrays must be (N,) or (N, channels); got shape {array.shape}")
        return _audio_array(_pcm_to_float(array, name).mean(axis=channel_axis), name)
    if array.ndim != 1:
        raise MediaError(f"{name}: audio arrays must be (N,) or (N, channels); got shape {array.shape}")
    samples = _pcm_to_float(array, name)
    if not np.isfinite(samples).all():
        raise MediaError(f"{name}: the audio contains NaN or infinity; clean it before loading")
    return samples


def _pcm_to_float(array: np.ndarray, name: str) -> np.ndarray:
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32, copy=False)
    if array.dtype == np.uint8:
        return (array.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(array.dtype, np.signedinteger):
        return array.astype(np.float32) / float(np.iinfo(array.dtype).max + 1)
    raise MediaError(f"{name}: unsupported audio dtype {array.dtype}; use float32 in [-1, 1] or int16 PCM")


def _finish_audio(samples: np.ndarray, rate: int) -> np.ndarray:
    """Resample to 16 kHz with a polyphase anti-aliasing filter and clip to [-1, 1]."""
    samples = np.asarray(samples, dtype=np.float32)
    if rate != SAMPLE_RATE:
        from scipy.signal import resample_poly

        ratio = Fraction(SAMPLE_RATE, int(rate)).limit_denominator(1000)
        samples = resample_poly(samples, ratio.numerator, ratio.denominator).astype(np.float32)
    return np.ascontiguousarray(np.clip(samples, -1.0, 1.0), dtype=np.float32)


def _load_audio_av(blob: _Blob, limits: MediaLimits) -> LoadedAudio:
    """Audio that libsndfile cannot read (AAC/M4A, the audio track of a video) decoded with FFmpeg."""
    import av

    name = blob.name
    container = _open_av(blob, "audio")
    try:
        if not container.streams.audio:
            raise MediaError(
                f"{name}: unsupported audio format or no audio track{_kind_hint(blob.head(), 'audio')}; "
                f"supported: {_AUDIO_FORMATS}"
            )
        stream = container.streams.audio[0]
        seconds = _av_duration(container, stream)
        if seconds is not None and seconds > limits.max_audio_seconds:
            _check_audio_length(name, int(seconds * SAMPLE_RATE) + 1, SAMPLE_RATE, limits)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        chunks: list[np.ndarray] = []
        total = 0
        max_samples = int(limits.max_audio_seconds * SAMPLE_RATE)
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    total += chunks[-1].size
                if total > max_samples:
                    _check_audio_length(name, total, SAMPLE_RATE, limits)
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.FFmpegError as error:
            if not chunks:
                raise MediaError(f"{name}: the audio is corrupt ({error}); re-export or re-download it") from error
            logger.warning("%s: audio decoding stopped early (%s); using the first %.1f s", name, error,
                           total / SAMPLE_RATE)
    finally:
        container.close()
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    _check_audio_length(name, samples.size, SAMPLE_RATE, limits)
    _check_complete(name, "audio", seconds, samples.size / SAMPLE_RATE, slack=0.1)
    return LoadedAudio(name=name, samples=_finish_audio(samples, SAMPLE_RATE))


# ---------------------------------------------------------------------------------------------------------------
# Video
# ---------------------------------------------------------------------------------------------------------------


def load_video(
    source: MediaSource, limits: MediaLimits | None = None, *, fps: float | None = None
) -> LoadedVideo:
    """Decode a video and keep frames sampled at `limits.video_sample_fps`.

    When the video is longer than `max_video_frames / video_sample_fps` seconds the sampling interval is widened so
    the kept frames still span the whole video (the model should see the end as well as the start).
    `fps` is required for (N, H, W, 3) arrays and ignored otherwise.
    """
    limits = limits or MediaLimits()
    if isinstance(source, np.ndarray):
        return _video_from_array(source, limits, fps)
    import av

    blob = _Blob(source, limits, "video")
    name = blob.name
    still = _sniff(blob.head())
    if still in ("JPEG image", "PNG image"):
        raise MediaError(f"{name}: this is a still {still}, not a video; pass it with load_image / --image")
    container = _open_av(blob, "video")
    try:
        if not container.streams.video:
            raise MediaError(
                f"{name}: no video stream found{_kind_hint(blob.head(), 'video')}; supported: {_VIDEO_FORMATS}"
            )
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        native_fps = float(rate) if rate else 0.0
        if stream.width and stream.height:
            _check_pixels(name, (stream.width, stream.height), limits)
        seconds = _av_duration(container, stream)
        _check_video_seconds(name, seconds, limits)
        interval = _sample_interval(seconds, limits)
        start = stream.start_time if stream.start_time is not None else 0
        time_base = float(stream.time_base) if stream.time_base else (1.0 / native_fps if native_fps else 0.0)

        frames: list[np.ndarray] = []
        timestamps: list[float] = []
        indices: list[int] = []
        next_time = 0.0
        last_time = 0.0
        index = -1
        try:
            for index, frame in enumerate(container.decode(stream)):
                if frame.pts is not None and time_base:
                    time = max(0.0, (frame.pts - start) * time_base)
                else:
                    time = index / native_fps if native_fps else float(index)
                last_time = time
                if time > limits.max_video_seconds:
                    _check_video_seconds(name, time, limits)
                if time + 1e-6 < next_time or len(frames) >= limits.max_video_frames:
                    continue
                frames.append(_upright(frame.to_ndarray(format="rgb24"), getattr(frame, "rotation", 0)))
                timestamps.append(round(time, 6))
                indices.append(index)
                next_time = (math.floor(time / interval + 1e-6) + 1) * interval
        except av.FFmpegError as error:
            if not frames:
                raise MediaError(f"{name}: the video is corrupt ({error}); re-export or re-download it") from error
            logger.warning("%s: video decoding stopped at frame %d (%s); keeping %d frames",
                           name, index, error, len(frames))
    finally:
        container.close()
    if not frames:
        raise MediaError(f"{name}: the video has no decodable frames; re-export or re-download it")
    frame_step = 1.0 / native_fps if native_fps else 0.0
    _check_complete(name, "video", seconds, last_time + frame_step, slack=3 * frame_step)
    duration = seconds if seconds is not None else last_time + (1.0 / native_fps if native_fps else 0.0)
    return LoadedVideo(
        name=name,
        frames=np.stack(frames),
        timestamps=timestamps,
        frame_indices=indices,
        fps=native_fps or (len(indices) / duration if duration else 0.0),
        duration=float(duration),
    )


def _open_av(blob: _Blob, kind: str) -> Any:
    import av

    try:
        return av.open(str(blob.path) if blob.path is not None else io.BytesIO(blob.data or b""), mode="r",
                       timeout=30.0)
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as error:
        formats = _VIDEO_FORMATS if kind == "video" else _AUDIO_FORMATS
        raise MediaError(
            f"{blob.name}: unsupported or corrupt {kind} file ({error}){_kind_hint(blob.head(), kind)}; "
            f"if it is a truncated download, fetch it again; supported: {formats}"
        ) from error


def _check_complete(name: str, kind: str, declared: float | None, decoded: float, slack: float) -> None:
    """A cut-off MP4 whose index survived decodes without error but stops early; the header knows better."""
    if declared is not None and decoded + max(slack, 0.5) < declared:
        raise MediaError(
            f"{name}: the {kind} is truncated or corrupt (header declares {declared:.2f} s, only {decoded:.2f} s could be "
            "decoded); re-export or re-download it"
        )


def _av_duration(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000.0
    return None


def _check_video_seconds(name: str, seconds: float | None, limits: MediaLimits) -> None:
    if seconds is not None and seconds > limits.max_video_seconds:
        raise MediaError(
            f"{name}: {seconds:.1f} s of video exceeds the {limits.max_video_seconds:.0f} s limit; "
            "trim it or raise MediaLimits(max_video_seconds=...)"
        )


def _sample_interval(seconds: float | None, limits: MediaLimits) -> float:
    interval = 1.0 / limits.video_sample_fps
    if seconds:
        interval = max(interval, seconds / limits.max_video_frames)
    return interval


def _upright(frame: np.ndarray, rotation: float | None) -> np.ndarray:
    """Apply the container's display rotation (phone videos), counter-clockwise degrees as PyAV reports it."""
    turns = round((rotation or 0) / 90.0) % 4
    return np.ascontiguousarray(np.rot90(frame, k=turns)) if turns else frame


def _video_from_array(array: np.ndarray, limits: MediaLimits, fps: float | None) -> LoadedVideo:
    name = "<array>"
    if fps is None or fps <= 0:
        raise MediaError(f"{name}: pass fps= (the frame rate of the array) to load a video from a numpy array")
    if array.ndim == 3:
        array = np.repeat(array[..., None], 3, axis=3)
    if array.ndim != 4 or array.shape[3] not in (3, 4) or array.shape[0] == 0:
        raise MediaError(f"{name}: video arrays must be (N, H, W, 3) with N >= 1; got shape {array.shape}")
    _check_pixels(name, (array.shape[2], array.shape[1]), limits)
    seconds = array.shape[0] / float(fps)
    _check_video_seconds(name, seconds, limits)
    interval = _sample_interval(seconds, limits)
    indices: list[int] = []
    next_time = 0.0
    for index in range(array.shape[0]):
        time = index / float(fps)
        if time + 1e-6 >= next_time and len(indices) < limits.max_video_frames:
            indices.append(index)
            next_time = (math.floor(time / interval + 1e-6) + 1) * interval
    frames = _to_uint8(array[indices][..., :3], name)
    return LoadedVideo(
        name=name,
        frames=np.ascontiguousarray(frames),
        timestamps=[round(i / float(fps), 6) for i in indices],
        frame_indices=indices,
        fps=float(fps),
        duration=seconds,
    )
