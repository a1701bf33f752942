"""reamo.media on real photos, videos and sounds, plus the broken files users actually send."""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
import skimage.data
import soundfile
from PIL import Image

from reamo.errors import MediaError
from reamo.media import MediaBundle, MediaLimits, load_audio, load_image, load_video

from conftest import data_dir

DATA = data_dir() / "media"  # the shared sample photos and videos (tests marked needs_data("media"))
IMAGES = DATA / "images"
VIDEOS = DATA / "videos"
# Real photos that ship inside scikit-image, and clips the tests make (`clips`): these run in any clone.
SKIMAGE_PHOTOS = Path(skimage.data.__file__).parent
ROCKET = SKIMAGE_PHOTOS / "rocket.jpg"  # 640x427 JPEG
SHARED_MEDIA = pytest.mark.needs_data("media")


def _make_clip(path: Path, seconds: float = 6.0, fps: int = 30, audio: bool = False) -> Path:
    """An H.264 MP4 (index first, like a web video) of a photo panning, with a 440 Hz AAC track when `audio`."""
    photo = skimage.data.astronaut()
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        video = container.add_stream("h264", rate=fps)
        video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
        sound = container.add_stream("aac", rate=16000) if audio else None
        for index in range(int(seconds * fps)):
            x = (3 * index) % 150
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(photo[x : x + 240, x : x + 320]), format="rgb24")
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        if sound is not None:
            samples = _tone(440, seconds, 16000)
            for start in range(0, len(samples), 1024):
                chunk = av.AudioFrame.from_ndarray(samples[None, start : start + 1024], format="flt", layout="mono")
                chunk.sample_rate, chunk.pts = 16000, start
                for packet in sound.encode(chunk):
                    container.mux(packet)
            for packet in sound.encode(None):
                container.mux(packet)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """6 s clips made here: 'video' (no audio track) and 'with_audio'."""
    folder = tmp_path_factory.mktemp("clips")
    return {"video": _make_clip(folder / "pan.mp4"), "with_audio": _make_clip(folder / "pan_tone.mp4", audio=True)}


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels but holds almost no data: what a decompression bomb looks like."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [
    *(pytest.param(IMAGES / name, marks=SHARED_MEDIA, id=name) for name in ("truck.jpg", "groceries.jpg", "cars.jpg")),
    *(pytest.param(SKIMAGE_PHOTOS / name, id=name) for name in ("rocket.jpg", "hubble_deep_field.jpg", "retina.jpg")),
])
def test_real_photos_load_as_rgb_identical_to_pillow(path: Path) -> None:
    name = path.name
    image = load_image(path)
    with Image.open(path) as reference:
        expected = np.asarray(reference.convert("RGB"))
    assert image.array.dtype == np.uint8 and image.array.shape == expected.shape
    assert (image.width, image.height) == (expected.shape[1], expected.shape[0])
    assert np.array_equal(image.array, expected)
    assert image.name.endswith(name)
    assert image.to_pil().size == (image.width, image.height)


def test_skimage_photo_round_trips_through_png_bytes_array_and_pil(tmp_path: Path) -> None:
    astronaut = skimage.data.astronaut()
    path = tmp_path / "astronaut.png"
    Image.fromarray(astronaut).save(path)
    from_path = load_image(path)
    from_bytes = load_image(path.read_bytes())
    from_array = load_image(astronaut)
    from_pil = load_image(Image.fromarray(astronaut))
    for loaded in (from_path, from_bytes, from_array, from_pil):
        assert np.array_equal(loaded.array, astronaut)
    assert from_bytes.name == "<bytes>" and from_array.name == "<array>"


def test_grayscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    camera = skimage.data.camera()
    path = tmp_path / "camera.png"
    Image.fromarray(camera).save(path)
    image = load_image(path)
    assert image.array.shape == (*camera.shape, 3)
    for channel in range(3):
        assert np.array_equal(image.array[:, :, channel], camera)
    assert np.array_equal(load_image(camera).array[:, :, 1], camera)


def test_rgba_transparent_pixels_become_white_and_opaque_pixels_keep_color(tmp_path: Path) -> None:
    chelsea = skimage.data.chelsea()
    alpha = np.full(chelsea.shape[:2], 255, dtype=np.uint8)
    alpha[:, : chelsea.shape[1] // 2] = 0
    path = tmp_path / "cat.png"
    Image.fromarray(np.dstack([chelsea, alpha])).save(path)
    image = load_image(path)
    half = chelsea.shape[1] // 2
    assert (image.array[:, :half] == 255).all()
    assert np.array_equal(image.array[:, half:], chelsea[:, half:])


def test_cmyk_jpeg_converts_to_rgb_close_to_original(tmp_path: Path) -> None:
    coffee = skimage.data.coffee()
    path = tmp_path / "coffee_cmyk.jpg"
    Image.fromarray(coffee).convert("CMYK").save(path, quality=95)
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    image = load_image(path)
    assert image.array.shape == coffee.shape
    assert np.abs(image.array.astype(int) - coffee.astype(int)).mean() < 6


def test_palette_and_16_bit_images(tmp_path: Path) -> None:
    chelsea = skimage.data.chelsea()
    palette_path = tmp_path / "cat.gif"
    Image.fromarray(chelsea).convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(palette_path)
    palette = load_image(palette_path)
    assert palette.array.shape == chelsea.shape
    assert np.abs(palette.array.astype(int) - chelsea.astype(int)).mean() < 12

    ramp = (np.arange(256 * 64, dtype=np.uint16).reshape(64, 256) * 4).astype(np.uint16)
    deep_path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(deep_path)
    deep = load_image(deep_path)
    expected = np.round(ramp / 65535.0 * 255.0).astype(np.uint8)
    assert np.abs(deep.array[:, :, 0].astype(int) - expected.astype(int)).max() <= 1


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    astronaut = skimage.data.astronaut()[:, :400]  # not square, so a rotation changes the shape
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "phone.png"
    Image.fromarray(astronaut).save(path, exif=exif)
    image = load_image(path)
    assert image.array.shape == (400, 512, 3)
    assert np.array_equal(image.array, np.rot90(astronaut, k=-1))


def test_wrong_extension_is_read_by_content(tmp_path: Path) -> None:
    path = tmp_path / "actually_a_jpeg.png"
    path.write_bytes(ROCKET.read_bytes())
    assert load_image(path).array.shape == (427, 640, 3)


@pytest.mark.parametrize("fraction", [0.5, 0.9])
@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_images_raise_media_error(tmp_path: Path, suffix: str, fraction: float) -> None:
    whole = tmp_path / f"whole{suffix}"
    Image.fromarray(skimage.data.astronaut()).save(whole)
    data = whole.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(MediaError, match="truncated|damaged|corrupt") as info:
        load_image(cut)
    assert str(cut) in str(info.value)


def test_empty_missing_and_unsupported_files(tmp_path: Path, clips: dict[str, Path]) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(MediaError, match=r"empty \(0 bytes\)"):
        load_image(empty)
    with pytest.raises(MediaError, match="not found"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(MediaError, match="not a regular file"):
        load_image(tmp_path)
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture\n" * 20)
    with pytest.raises(MediaError, match="unsupported image format.*supported: JPEG, PNG") as info:
        load_image(text)
    assert str(text) in str(info.value)
    with pytest.raises(MediaError, match="load_video"):
        load_image(clips["video"])
    with pytest.raises(MediaError, match="file path, bytes"):
        load_image(12345)  # type: ignore[arg-type]


def test_pixel_limit_is_checked_before_decoding() -> None:
    bomb = _png_header_only(8_000, 8_000)  # 64 megapixels (192 MB decoded) from a 100-byte file
    start = time.perf_counter()
    with pytest.raises(MediaError, match="max_pixels"):
        load_image(bomb)
    assert time.perf_counter() - start < 1.0
    with pytest.raises(MediaError, match="max_pixels"):
        load_image(skimage.data.astronaut(), MediaLimits(max_pixels=100_000))


def test_pillow_own_bomb_guard_becomes_media_error() -> None:
    bomb = _png_header_only(100_000, 100_000)  # 10 gigapixels: Pillow refuses it while reading the header
    with pytest.raises(MediaError, match="decompression bomb"):
        load_image(bomb, MediaLimits(max_pixels=10**12))


def test_byte_limit(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="max_bytes"):
        load_image(ROCKET, MediaLimits(max_bytes=1000))


def test_image_arrays_float_and_bad_shapes() -> None:
    unit = skimage.data.astronaut().astype(np.float32) / 255.0
    assert np.abs(load_image(unit).array.astype(int) - skimage.data.astronaut()).max() <= 1
    with pytest.raises(MediaError, match="shape"):
        load_image(np.zeros((4, 4, 5), dtype=np.uint8))
    with pytest.raises(MediaError, match="0..255"):
        load_image(np.full((4, 4), 1000, dtype=np.int32))


# ---------------------------------------------------------------------------------------------------------------
# Audio
# ---------------------------------------------------------------------------------------------------------------


def _tone(frequency: float, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def _amplitude_at(samples: np.ndarray, rate: int, frequency: float) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples)))) / (len(samples) / 4)
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    band = (freqs > frequency - 20) & (freqs < frequency + 20)
    return float(spectrum[band].max())


def test_stereo_44k_is_mixed_down_and_resampled_to_16k(tmp_path: Path) -> None:
    left, right = _tone(440, 2.0, 44100), _tone(1000, 2.0, 44100)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left, right], axis=1), 44100)
    audio = load_audio(path)
    assert audio.sample_rate == 16000 and audio.samples.dtype == np.float32
    assert abs(len(audio.samples) - 32000) <= 1
    assert audio.duration == pytest.approx(2.0, abs=1e-3)
    # each channel contributes half its amplitude to the mix
    assert _amplitude_at(audio.samples, 16000, 440) == pytest.approx(0.25, rel=0.05)
    assert _amplitude_at(audio.samples, 16000, 1000) == pytest.approx(0.25, rel=0.05)


def test_resampling_filters_frequencies_above_the_new_nyquist(tmp_path: Path) -> None:
    path = tmp_path / "high.flac"
    soundfile.write(path, _tone(11000, 1.0, 44100) + _tone(1000, 1.0, 44100), 44100)
    audio = load_audio(path)
    # naive decimation would fold 11 kHz to 5 kHz; a proper low-pass removes it
    assert _amplitude_at(audio.samples, 16000, 5000) < 0.01
    assert _amplitude_at(audio.samples, 16000, 1000) == pytest.approx(0.5, rel=0.05)


def test_audio_arrays_int16_and_channels_first() -> None:
    pcm = (_tone(500, 1.0, 8000) * 32767).astype(np.int16)
    audio = load_audio(pcm, sample_rate=8000)
    assert abs(len(audio.samples) - 16000) <= 1
    assert _amplitude_at(audio.samples, 16000, 500) == pytest.approx(0.5, rel=0.05)
    stereo_first = np.stack([_tone(500, 1.0, 16000), _tone(500, 1.0, 16000)])
    assert load_audio(stereo_first).samples.shape == (16000,)


def test_audio_wrong_extension_and_audio_track_of_video(tmp_path: Path, clips: dict[str, Path]) -> None:
    path = tmp_path / "tone.mp3"  # really a WAV
    soundfile.write(path, _tone(440, 0.5, 22050), 22050, format="WAV")
    assert load_audio(path).duration == pytest.approx(0.5, abs=1e-3)
    track = load_audio(clips["with_audio"])
    assert track.duration == pytest.approx(6.0, abs=0.1)
    assert _amplitude_at(track.samples, 16000, 440) > 10 * _amplitude_at(track.samples, 16000, 1000)


def test_audio_errors(tmp_path: Path, clips: dict[str, Path]) -> None:
    silent = tmp_path / "zero.wav"
    soundfile.write(silent, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(MediaError, match=r"no samples \(0 s\)") as info:
        load_audio(silent)
    assert str(silent) in str(info.value)

    long = tmp_path / "long.wav"
    soundfile.write(long, _tone(440, 3.0, 16000), 16000)
    with pytest.raises(MediaError, match="max_audio_seconds"):
        load_audio(long, MediaLimits(max_audio_seconds=2))

    cut = tmp_path / "cut.wav"
    cut.write_bytes(long.read_bytes()[:20000])
    with pytest.raises(MediaError, match="truncated"):
        load_audio(cut)

    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(MediaError, match="empty"):
        load_audio(empty)

    with pytest.raises(MediaError, match="load_image"):
        load_audio(ROCKET)
    with pytest.raises(MediaError, match="no audio track"):
        load_audio(clips["video"])


# ---------------------------------------------------------------------------------------------------------------
# Video
# ---------------------------------------------------------------------------------------------------------------


def _numbered_video(path: Path, frames: int, fps: int) -> None:
    """Lossless video whose frame i is uniformly gray level 4*i, so a sampled frame reveals its original index."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv444p"
        for index in range(frames):
            array = np.full((48, 64, 3), 4 * index, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def test_video_sampling_indices_and_timestamps_match_frame_content(tmp_path: Path) -> None:
    path = tmp_path / "numbered.mkv"
    _numbered_video(path, frames=50, fps=10)
    video = load_video(path, MediaLimits(video_sample_fps=2.0))
    assert video.fps == pytest.approx(10.0)
    assert video.duration == pytest.approx(5.0, abs=0.11)
    assert video.frame_indices == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45]
    assert video.timestamps == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5])
    levels = video.frames.reshape(len(video.frames), -1).mean(axis=1)
    assert np.abs(levels - 4 * np.array(video.frame_indices)).max() < 2

    spread = load_video(path, MediaLimits(video_sample_fps=2.0, max_video_frames=4))
    assert len(spread.frame_indices) == 4 and spread.frame_indices[-1] >= 35  # covers the end, not only 0-1.5 s


@SHARED_MEDIA
def test_real_video_is_sampled_at_two_fps() -> None:
    video = load_video(VIDEOS / "bedroom.mp4")
    assert video.frames.shape[1:] == (540, 960, 3) and (video.width, video.height) == (960, 540)
    assert video.fps == pytest.approx(30.0)
    assert video.duration == pytest.approx(6.67, abs=0.05)
    assert len(video.frames) == len(video.timestamps) == len(video.frame_indices) == 14
    assert np.diff(video.timestamps) == pytest.approx([0.5] * 13, abs=1 / 30 + 1e-6)
    assert [round(t * video.fps) for t in video.timestamps] == video.frame_indices
    assert video.frames.std() > 10  # real picture, not blank frames


def test_video_from_array_and_bundle() -> None:
    frames = np.stack([np.full((8, 8, 3), i, dtype=np.uint8) for i in range(30)])
    video = load_video(frames, fps=10)
    assert video.frame_indices == [0, 5, 10, 15, 20, 25] and video.duration == pytest.approx(3.0)
    with pytest.raises(MediaError, match="fps="):
        load_video(frames)
    limits = MediaLimits(video_sample_fps=1)
    bundle = MediaBundle.load(image=skimage.data.coffee(), video=frames, limits=limits, video_fps=10)
    assert bundle.modalities == ["image", "video"] and bundle.audio is None


def test_video_errors(tmp_path: Path, clips: dict[str, Path]) -> None:
    data = clips["video"].read_bytes()
    for fraction in (0.01, 0.5, 0.8):
        cut = tmp_path / f"cut{fraction}.mp4"
        cut.write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(MediaError, match="truncated|corrupt") as info:
            load_video(cut)
        assert str(cut) in str(info.value)
    damaged = bytearray(data)  # garbage over the middle third: decoding fails part way
    third = len(data) // 3
    damaged[third : 2 * third] = np.random.default_rng(0).integers(0, 256, third, dtype=np.uint8).tobytes()
    with pytest.raises(MediaError, match="truncated or corrupt"):
        load_video(bytes(damaged))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(MediaError, match="empty"):
        load_video(empty)
    with pytest.raises(MediaError, match="max_video_seconds"):
        load_video(clips["video"], MediaLimits(max_video_seconds=3))
    with pytest.raises(MediaError, match="load_image"):
        load_video(ROCKET)
    wav = tmp_path / "sound.mp4"
    soundfile.write(wav, _tone(440, 0.5, 16000), 16000, format="WAV")
    with pytest.raises(MediaError, match="no video stream.*load_audio"):
        load_video(wav)
    renamed = tmp_path / "clip.avi"
    renamed.write_bytes(data)
    assert len(load_video(renamed).frames) == 12  # 6 s sampled at 2 fps


def test_two_d_float_arrays_are_grayscale_in_unit_or_byte_range() -> None:
    """Issue 27: a 2-D float array as image; [0, 1] and [0, 255] both become the same gray RGB image."""
    gray = skimage.data.camera()[:64, :96]
    for array in (gray.astype(np.float64) / 255.0, gray.astype(np.float32)):
        image = load_image(array)
        assert image.array.shape == (64, 96, 3) and image.array.dtype == np.uint8
        assert np.abs(image.array[:, :, 0].astype(int) - gray).max() <= 1
        assert (image.array[:, :, 0] == image.array[:, :, 2]).all()
    with pytest.raises(MediaError, match=r"\(64, 96\) float64 array are outside 0\.\.255; scale them to \[0, 1\]"):
        load_image((gray - gray.mean()) / gray.std())  # a standardized array: refused, not silently clipped
