"""Reading a video's frames: a video file (PyAV), a folder of images (Pillow) or a .safetensors "frames" tensor,
sampled as PLLaVA's loaders sample them, only the kept frames ever decoded. Every host reads its frames here.

    frames, note = read_frames("clip.mp4", n=16)           # 16 (H, W, 3) uint8 tensors, note if it had fewer
    frames, note = read_frames(path, vm.frames, vm.sample_indices)    # a host that samples its own way
"""

import torch


def sample_indices(n_available: int, n: int):
    """Uniform sampling: the middle frame of each of n equal segments (how PLLaVA's loaders pick frames)."""
    if n_available < 1:
        raise ValueError("the video has no frames")
    seg = n_available / n
    return [min(n_available - 1, int(seg / 2 + seg * i)) for i in range(n)]


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def read_frames(path, n: int, sample=None):
    """n frames, each (H, W, 3) uint8 in a list, sampled uniformly, and a note when the video had fewer than n.

    `sample(n_available, n)` picks the frame indices: PLLaVA's `sample_indices` unless a host gives its own.

    `path` is a folder of images (sorted by name; needs Pillow), a video file (needs PyAV), or a .safetensors
    file holding a "frames" tensor (T, H, W, 3) uint8. Only the n sampled frames are ever decoded and kept, so
    memory does not grow with the video's length. With fewer frames than n, frames are repeated, as PLLaVA's
    projector does, and the note says so. Anything unreadable is a ValueError that names the file."""
    from pathlib import Path

    path, sample = Path(path), sample or sample_indices
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    if path.is_dir():
        frames, available = read_image_folder(path, n, sample)
    elif path.suffix == ".safetensors":
        frames, available = read_frames_tensor(path, n, sample)
    else:
        frames, available = read_video_file(path, n, sample)
    note = None
    if available < n:
        note = f"the video has {available} frames, fewer than the model's {n}: frames are repeated"
    return frames, note


def read_image_folder(path, n: int, sample=sample_indices):
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    Image = optional("PIL.Image", "pillow", "reading a folder of images")
    frames = []
    for i in sample(len(files), n):
        try:
            img = Image.open(files[i]).convert("RGB")
        except (OSError, ValueError) as e:  # Pillow: truncated, empty or not an image at all
            raise ValueError(f"{files[i]}: cannot read this image ({e})") from None
        frames.append(torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(img.size[1], img.size[0], 3))
    return frames, len(files)


def read_frames_tensor(path, n: int, sample=sample_indices):
    """The sampled frames of a .safetensors "frames" tensor, read one by one: the file is never loaded whole."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            if "frames" not in f.keys():
                raise ValueError(f"{path}: needs a 'frames' tensor (T, H, W, 3) uint8; it holds {sorted(f.keys())}")
            frames = f.get_slice("frames")
            shape, dtype = frames.get_shape(), frames.get_dtype()
            if len(shape) != 4 or shape[-1] != 3 or dtype != "U8" or 0 in shape:
                raise ValueError(f"{path}: 'frames' is {dtype} {list(shape)}; it must be (T, H, W, 3) uint8, "
                                 "none of them 0")
            return [frames[i : i + 1][0] for i in sample(shape[0], n)], shape[0]
    except ValueError:
        raise
    except Exception as e:  # safetensors raises its own error types for truncated / corrupt files
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None


def read_video_file(path, n: int, sample=sample_indices):
    """The sampled frames of a video file, decoding it once and converting only the n frames it keeps.

    The frame count comes first, from the container's packets (no decoding). Then one decoding pass keeps the
    frames at the sampled indices and drops every other one as soon as it is decoded. If decoding finds another
    count than the packets said (a container that lies), the indices are recomputed and the pass is repeated."""
    av = optional("av", "av", "reading video files")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path}: has no video stream")
            count = sum(1 for packet in container.demux(video=0) if packet.size)
        for _ in range(2):
            frames, decoded = decode_frames(av, path, sample(max(count, 1), n))
            if decoded == 0:
                raise ValueError(f"{path}: the video has no frames")
            if decoded == count:
                return frames, count
            count = decoded
    except ValueError:
        raise
    except Exception as e:  # PyAV raises its own error types for unreadable files
        raise ValueError(f"{path}: cannot decode this video ({e})") from None
    raise ValueError(f"{path}: decodes to a different number of frames each time")


def decode_frames(av, path, wanted: list):
    """(the frames at the indices in `wanted`, in order and repeated where it repeats, (H, W, 3) uint8;
    the number of frames decoded)."""
    kept, decoded = {}, 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # decode with the cores there are
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted and i not in kept:
                kept[i] = torch.from_numpy(frame.to_ndarray(format="rgb24"))
            decoded = i + 1
    return [kept[i] for i in wanted if i in kept], decoded


def optional(module: str, package: str, purpose: str):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(f"{purpose} needs the optional package '{package}': pip install {package}  "
                         f"(or pip install -e .[video])") from None
