"""Reading videos: the same frames as decoding everything, memory bounded by the frames kept, mixed-size photo
folders, and a clear ValueError naming the file for every bad input the reader and the loader are given."""

import json
import struct
import sys

import pytest
import torch
from safetensors.torch import save_file

import weights
from minivtp.lab import png
from minivtp.hosts.frames import read_frames, sample_indices
from minivtp.hosts.llava import preprocess, preprocess_one

av = pytest.importorskip("av", reason="PyAV reads video files: pip install -e .[test]")


def level(i):  # neighbouring frames 7 grey levels apart, so a decoded frame is known within +-3 levels
    return 20 + (7 * i) % 210


def write_clip(path, n_frames, width=64, height=48, fps=25):
    """A clip whose frame i is a flat grey of level level(i): decoded frames say which frame they are."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"qscale": "1"}
        for i in range(n_frames):
            img = torch.full((height, width, 3), level(i), dtype=torch.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img.numpy(), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def decode_everything(path):
    """What read_frames did before: every frame decoded and kept, then sampled."""
    with av.open(str(path)) as c:
        return [torch.from_numpy(f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]


@pytest.mark.parametrize("n_frames,n", [(50, 16), (7, 16), (16, 16), (101, 8), (1, 4)])
def test_same_frames_as_decoding_everything(tmp_path, n_frames, n):
    clip = write_clip(tmp_path / "clip.mp4", n_frames)
    every = decode_everything(clip)
    assert len(every) == n_frames
    frames, note = read_frames(clip, n)
    assert len(frames) == n
    for got, i in zip(frames, sample_indices(n_frames, n)):
        assert torch.equal(got, every[i])
    assert (note is None) == (n_frames >= n)


class FakeAV:
    """A stand-in for PyAV that decodes `n` frames and counts what the reader holds on to. Deterministic, where a
    measure of resident memory would depend on the machine: at most `alive_max` decoded frames ever existed at
    once, and `converted` of them became arrays (the only frames the reader may keep)."""

    def __init__(self, n, size=(120, 160)):
        self.n, self.size = n, size
        self.alive = self.alive_max = self.converted = self.opened = 0
        fake = self

        class Frame:
            def __init__(self, i):
                self.i = i
                fake.alive += 1
                fake.alive_max = max(fake.alive_max, fake.alive)

            def __del__(self):
                fake.alive -= 1

            def to_ndarray(self, format):
                fake.converted += 1
                import numpy
                return numpy.full((*fake.size, 3), self.i % 256, dtype=numpy.uint8)

        class Container:
            def __init__(self):
                fake.opened += 1
                self.streams = type("Streams", (), {"video": [type("Stream", (), {})()]})()

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def demux(self, video=0):
                return (type("Packet", (), {"size": 100})() for _ in range(fake.n))

            def decode(self, stream=None, video=None):
                return (Frame(i) for i in range(fake.n))

        self.open = lambda path: Container()


def test_memory_is_bounded_by_the_frames_kept(tmp_path, monkeypatch):
    fake = FakeAV(600)
    monkeypatch.setitem(sys.modules, "av", fake)
    (tmp_path / "long.mp4").write_bytes(b"")
    frames, note = read_frames(tmp_path / "long.mp4", 16)
    assert note is None and len(frames) == 16
    assert [int(f[0, 0, 0]) for f in frames] == [i % 256 for i in sample_indices(600, 16)]
    assert fake.converted == 16  # only the kept frames became arrays
    assert fake.alive_max <= 2  # and every other decoded frame was let go as soon as the next one came
    assert fake.opened == 2  # one pass over the packets to count, one decoding pass


def test_a_container_that_miscounts_is_decoded_again_with_the_true_count(tmp_path, monkeypatch):
    fake = FakeAV(90)
    fake_open = fake.open

    def lying_open(path):  # the packets say 120 frames, decoding finds 90
        c = fake_open(path)
        c.demux = lambda video=0: (type("Packet", (), {"size": 1})() for _ in range(120))
        return c

    fake.open = lying_open
    monkeypatch.setitem(sys.modules, "av", fake)
    (tmp_path / "odd.mp4").write_bytes(b"")
    frames, _ = read_frames(tmp_path / "odd.mp4", 8)
    assert [int(f[0, 0, 0]) for f in frames] == sample_indices(90, 8)
    assert fake.opened == 3


def test_a_real_clip_converts_only_the_sampled_frames(tmp_path):
    clip = write_clip(tmp_path / "long.mp4", 300, width=32, height=32)
    frames, _ = read_frames(clip, 16)
    levels = [f.float().mean().item() for f in frames]
    want = [level(i) for i in sample_indices(300, 16)]
    assert all(abs(got - w) <= 3 for got, w in zip(levels, want)), (levels, want)  # YUV rounding moves a grey by 1-2


def test_safetensors_frames_are_read_frame_by_frame(tmp_path):
    video = torch.randint(0, 256, (40, 8, 10, 3), dtype=torch.uint8)
    save_file({"frames": video}, tmp_path / "v.safetensors")
    frames, note = read_frames(tmp_path / "v.safetensors", 6)
    assert note is None and [f.shape for f in frames] == [(8, 10, 3)] * 6
    assert all(torch.equal(f, video[i]) for f, i in zip(frames, sample_indices(40, 6)))


def test_a_folder_of_photos_of_different_sizes(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    sizes = [(30, 40), (64, 48), (20, 90), (33, 33)]
    for i, (h, w) in enumerate(sizes):
        png.write_png(folder / f"{i}.png", torch.randint(0, 256, (h, w, 3), dtype=torch.uint8))
    frames, _ = read_frames(folder, 4)
    assert [tuple(f.shape[:2]) for f in frames] == sizes
    px = preprocess(frames, 28)
    assert px.shape == (4, 3, 28, 28)
    for f, p in zip(frames, px):  # each frame exactly as it would be alone
        torch.testing.assert_close(p, preprocess_one(f, 28), rtol=0, atol=0)
    same = torch.stack([frames[3]] * 2)  # a (T, H, W, 3) tensor still works
    torch.testing.assert_close(preprocess(same, 28), px[3:].expand(2, -1, -1, -1), rtol=0, atol=0)


# ---- bad files: a ValueError that names the file, never another exception ----------------------------------------


def bad_safetensors(tmp_path):
    good = tmp_path / "good.safetensors"
    save_file({"frames": torch.zeros(4, 8, 8, 3, dtype=torch.uint8)}, good)
    data = good.read_bytes()
    header = lambda d: struct.pack("<Q", len(d)) + d  # noqa: E731
    cases = {
        "truncated.safetensors": data[: len(data) // 2],
        "header-only.safetensors": data[:8],
        "zero-size.safetensors": b"",
        "junk.safetensors": b"\x00\x01" * 50,
        "huge-header.safetensors": struct.pack("<Q", 2**40) + b"{}",
        "bad-json.safetensors": header(b"{not json"),
    }
    tensors = {
        "float-frames.safetensors": {"frames": torch.zeros(4, 8, 8, 3)},
        "rank3.safetensors": {"frames": torch.zeros(8, 8, 3, dtype=torch.uint8)},
        "four-channels.safetensors": {"frames": torch.zeros(2, 8, 8, 4, dtype=torch.uint8)},
        "no-frames.safetensors": {"video": torch.zeros(2, 8, 8, 3, dtype=torch.uint8)},
        "zero-frames.safetensors": {"frames": torch.zeros(0, 8, 8, 3, dtype=torch.uint8)},
        "zero-width.safetensors": {"frames": torch.zeros(2, 8, 0, 3, dtype=torch.uint8)},
    }
    paths = []
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        paths.append(tmp_path / name)
    for name, t in tensors.items():
        save_file(t, tmp_path / name)
        paths.append(tmp_path / name)
    return paths


def bad_videos(tmp_path):
    clip = write_clip(tmp_path / "ok.mp4", 30).read_bytes()
    cases = {"zero-size.mp4": b"", "junk.mp4": bytes(range(256)) * 8, "truncated.mp4": clip[: len(clip) // 3],
             "header-only.mp4": clip[:64], "text.avi": b"this is not a video\n" * 20}
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
    with av.open(str(tmp_path / "audio-only.wav"), "w") as out:  # a real media file with no video stream
        s = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(torch.zeros(1, 800, dtype=torch.int16).numpy(), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in s.encode(frame):
            out.mux(packet)
    return [tmp_path / n for n in cases] + [tmp_path / "audio-only.wav"]


def bad_image_folders(tmp_path):
    folders = []
    for name, blob in {"zero-size": b"", "truncated": None, "junk": b"GIF89a" + b"\x00" * 30}.items():
        d = tmp_path / f"photos-{name}"
        d.mkdir()
        png.write_png(d / "0.png", torch.zeros(8, 8, 3, dtype=torch.uint8))
        if blob is None:
            png.write_png(d / "1.png", torch.zeros(8, 8, 3, dtype=torch.uint8))
            blob = (d / "1.png").read_bytes()[:40]
        (d / "1.png").write_bytes(blob)
        folders.append((d, d / "1.png"))
    return folders


def test_every_bad_frames_file_is_a_value_error_naming_it(tmp_path):
    checked = 0
    for path in bad_safetensors(tmp_path) + bad_videos(tmp_path):
        with pytest.raises(ValueError) as e:
            read_frames(path, 4)
        assert str(path) in str(e.value), (path.name, str(e.value))
        checked += 1
    for folder, file in bad_image_folders(tmp_path):
        with pytest.raises(ValueError) as e:
            read_frames(folder, 2)
        assert str(file) in str(e.value), (file, str(e.value))
        checked += 1
    assert checked == 21


def checkpoint_variants(src, tmp_path):
    """Copies of a good checkpoint directory with one thing broken in each: (directory, file the error must name)."""
    import shutil
    tmp_path.mkdir()
    out = []

    def variant(name, broken_file, blob):
        d = tmp_path / name
        shutil.copytree(src, d)
        (d / broken_file).write_bytes(blob)
        out.append((d, d / broken_file))

    shard = sorted(p.name for p in src.glob("*.safetensors"))[0]
    data = (src / shard).read_bytes()
    variant("config-empty", "config.json", b"")
    variant("config-junk", "config.json", b"\x00\xff garbage")
    variant("config-list", "config.json", b"[1, 2, 3]")
    variant("shard-truncated", shard, data[: len(data) // 2])
    variant("shard-zero", shard, b"")
    variant("shard-header-only", shard, data[:8])
    if (src / "model.safetensors.index.json").is_file():
        variant("index-junk", "model.safetensors.index.json", b"{oops")
    return out


def test_every_bad_checkpoint_is_a_value_error_naming_the_file(tiny_llama, llava, tmp_path):
    from minivtp.tokenizer import Tokenizer
    for load, src in ((weights.load, tiny_llama[0]), (weights.load_video_llm, llava[1])):
        for d, file in checkpoint_variants(src, tmp_path / load.__name__):
            with pytest.raises(ValueError) as e:
                load(d)
            assert file.name in str(e.value), (d.name, load.__name__, str(e.value))
    for name, blob in {"empty": b"", "junk": b"\xff\xfe{", "list": b"[]", "no-model": b'{"added_tokens": []}'}.items():
        d = tmp_path / f"tokenizer-{name}"
        d.mkdir()
        (d / "tokenizer.json").write_bytes(blob)
        with pytest.raises(ValueError) as e:
            Tokenizer.from_file(d)
        assert "tokenizer.json" in str(e.value), (name, str(e.value))


# ---- the command line: one error line, exit 2 --------------------------------------------------------------------


@pytest.mark.parametrize("args,want", [
    (["--device", "tpu"], "--device 'tpu' is not a device name torch knows"),
    (["--device", "cuda:7"], "--device cuda:7"),
    (["--device", "meta"], "--device 'meta': minivtp runs on cpu, cuda or mps"),
    (["--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
    (["--alpha", "lots"], "argument --alpha: invalid float value: 'lots'"),
    (["--layer", "2.5"], "argument --layer: invalid int value: '2.5'"),
    (["--alpha", "1.5"], "alpha=1.5 is outside (0, 1]"),
    (["--alpha", "0"], "alpha=0.0 is outside (0, 1]"),
])
def test_cli_bad_arguments_are_one_line(tmp_path, args, want):
    import subprocess
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "minivtp", "answer", "--weights", str(tmp_path), "--video", "v.mp4",
           "--question", "q"] + args
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and want in lines[0], out.stderr


def test_config_that_is_valid_json_but_not_an_object_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="config.json: holds a JSON list, not an object"):
        weights.load(tmp_path)


def test_cli_answers_about_a_folder_of_mixed_sizes_and_a_video_file(llava, tmp_path):
    import subprocess
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, (h, w) in enumerate([(30, 40), (64, 48), (20, 90), (33, 33), (50, 50)]):
        png.write_png(folder / f"{i}.png", torch.randint(0, 256, (h, w, 3), dtype=torch.uint8))
    clip = write_clip(tmp_path / "clip.mp4", 40)
    for video in (folder, clip):
        out = subprocess.run([sys.executable, "-m", "minivtp", "answer", "--weights", str(llava[1]), "--video",
                              str(video), "--question", "What happens?", "--layer", "1", "--max-new-tokens", "3",
                              "--device", "cpu", "--json", "--heatmap", str(tmp_path / "kept.png")],
                             capture_output=True, text=True, cwd=root, timeout=300)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["video_tokens"] == 8
