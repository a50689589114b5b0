"""Image files to uint8 tensors: decoded once, turned upright (EXIF), resized square to each size asked for.

Two decoders give the same kind of batch. PIL decodes in the DataLoader's workers; with
`jpeg_bytes=True` the workers only read JPEG files and `decode_on_device` decodes a whole batch
where the models run (nvJPEG on a GPU). Either way a file that cannot be decoded comes back as a
failed row with its reason, never as an exception, so one broken file never stops a run.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg

from .pictures import ImageSource, open_rgb

log = logging.getLogger(__name__)

JPEG_MAGIC = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"
EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the tensor operation on (..., H, W) that turns the stored pixels upright,
# the same as PIL.ImageOps.exif_transpose (a test checks all eight).
_UPRIGHT = {
    2: lambda x: x.flip(-1),
    3: lambda x: x.flip((-2, -1)),
    4: lambda x: x.flip(-2),
    5: lambda x: x.transpose(-2, -1),
    6: lambda x: torch.rot90(x, -1, (-2, -1)),
    7: lambda x: x.transpose(-2, -1).flip((-2, -1)),
    8: lambda x: torch.rot90(x, 1, (-2, -1)),
}


def image_source(root: Path, item: ImageSource) -> ImageSource:
    """A split's item as open_rgb takes it: a path under root, or the decoded picture itself."""
    return Path(root) / item if isinstance(item, (str, Path)) else item


def square_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """(3, size, size) uint8, resized without cropping as the book did."""
    img = img.resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def load_rgb(path: str | Path, size: int) -> torch.Tensor:
    """One image file as a (3, size, size) uint8 tensor."""
    return square_tensor(open_rgb(path), size)


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) of an encoded image; 1 when it has none. Reads the header only."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return int(img.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - a header PIL cannot read is the decoder's to judge
        return 1


def is_whole_jpeg(data: bytes) -> bool:
    """A JPEG that ends with its end-of-image marker. libjpeg (and nvJPEG) decode a truncated file
    into a partly grey picture without an error where PIL refuses it; such files go to PIL, so both
    decoders skip the same files."""
    return data.startswith(JPEG_MAGIC) and data.rstrip(b"\x00").endswith(JPEG_END)


def upright(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation to decoded (3, H, W) pixels on any device."""
    turn = _UPRIGHT.get(orientation)
    return turn(image) if turn is not None else image


class DecodedBatch(NamedTuple):
    rows: torch.Tensor  # (B,) int64 positions in the split of the decoded images, ascending
    images: dict[int, torch.Tensor]  # size -> (B, 3, size, size) uint8
    failed_rows: list[int]  # positions that could not be decoded
    failed_reasons: list[str]
    jpeg_rows: list[int] = []  # positions whose JPEG bytes are left to decode_on_device
    # Every such JPEG's bytes one after another in one tensor, so a batch crosses from a worker
    # process as one shared-memory file rather than one per image (workers x prefetch x batch
    # files would exhaust `ulimit -n`); image i is packed[offsets[i]:offsets[i + 1]].
    jpeg_packed: torch.Tensor = torch.empty(0, dtype=torch.uint8)
    jpeg_offsets: torch.Tensor = torch.zeros(1, dtype=torch.int64)
    jpeg_orientations: list[int] = []

    def jpeg(self, i: int) -> torch.Tensor:
        return self.jpeg_packed[int(self.jpeg_offsets[i]) : int(self.jpeg_offsets[i + 1])]


class ImageFiles(Dataset):
    """Item i is the split's image i, decoded once and resized to every size; a broken file yields its error.

    With jpeg_bytes=True a JPEG file comes back undecoded (its bytes and EXIF orientation), for
    decode_on_device; other formats, and pictures given already decoded, are still made here with PIL.
    """

    def __init__(self, root: Path, paths: Sequence[ImageSource], sizes: Sequence[int], jpeg_bytes: bool = False) -> None:
        self.root, self.paths, self.sizes, self.jpeg_bytes = Path(root), paths, tuple(sizes), jpeg_bytes

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int) -> tuple[int, object, str]:
        source = image_source(self.root, self.paths[row])
        try:
            if self.jpeg_bytes and isinstance(source, Path):
                source = source.read_bytes()
                if is_whole_jpeg(source):
                    return row, (source, exif_orientation(source)), "jpeg"
            img = open_rgb(source)
            return row, {size: square_tensor(img, size) for size in self.sizes}, ""
        except Exception as err:  # noqa: BLE001 - PIL raises many types for bad files; each is a skip
            return row, None, f"{type(err).__name__}: {err}"


def collate_decoded(items: list[tuple[int, object, str]]) -> DecodedBatch:
    decoded = [(row, images) for row, images, note in items if images is not None and note != "jpeg"]
    failed = [(row, reason) for row, images, reason in items if images is None]
    jpegs = [(row, payload) for row, payload, note in items if note == "jpeg"]
    sizes = next(iter(decoded))[1].keys() if decoded else ()
    images = {size: torch.stack([per_size[size] for _, per_size in decoded]) for size in sizes}
    lengths = [len(data) for _, (data, _) in jpegs]
    packed = np.frombuffer(b"".join(data for _, (data, _) in jpegs), dtype=np.uint8)
    return DecodedBatch(
        torch.tensor([row for row, _ in decoded], dtype=torch.int64),
        images,
        [row for row, _ in failed],
        [reason for _, reason in failed],
        [row for row, _ in jpegs],
        torch.from_numpy(packed.copy()),
        torch.tensor(np.concatenate(([0], np.cumsum(lengths))), dtype=torch.int64),
        [orientation for _, (_, orientation) in jpegs],
    )


class DecodeStream:
    """Where decode_on_device runs on a GPU: its own stream, so decoding overlaps the models' work.

    torchvision's CUDA decoder writes its output from an internal stream that does not wait for
    the caller's stream, so memory the caching allocator recycles on the caller's stream may still
    be read by queued kernels (pytorch/vision#8587). Synchronising this stream before each decode
    makes every block it freed truly free; compute waits for the decode by an event, and
    record_stream keeps the batch's memory from being recycled before compute is done with it.
    On a CPU every step is a no-op.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def __enter__(self) -> "DecodeStream":
        if self.stream is not None:
            self.stream.synchronize()  # CUDA: only this stream's (decode and resize) work, never the models'
            self._context = torch.cuda.stream(self.stream)
            self._context.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.stream is not None:
            self._context.__exit__(*exc)

    def hand_over(self, tensors: Sequence[torch.Tensor]) -> None:
        """Make the compute (current) stream wait for the decode and own the decoded batch."""
        if self.stream is None:
            return
        compute = torch.cuda.current_stream(self.device)
        compute.wait_stream(self.stream)  # CUDA: an event, the host does not wait
        for tensor in tensors:
            tensor.record_stream(compute)  # CUDA: freed only after compute's queued work that uses it


def decode_on_device(batch: DecodedBatch, root: Path, paths: Sequence[str], sizes: Sequence[int],
                     device: torch.device, stream: DecodeStream | None = None) -> DecodedBatch:
    """Decode the batch's JPEG bytes with torchvision.io.decode_jpeg on the device, turn upright, resize there.

    One batched call (nvJPEG on a GPU, libjpeg-turbo on a CPU); if it fails, image by image, and an
    image the device cannot decode gets PIL's verdict, so a broken file is skipped as on the PIL path.
    """
    if not batch.jpeg_rows:
        return batch
    stream = stream or DecodeStream(device)
    with stream:
        jpegs = [batch.jpeg(i) for i in range(len(batch.jpeg_rows))]
        try:
            decoded = decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one bad file fails the whole batched call: find it
            decoded = [_decode_one(data, device) for data in jpegs]
        rows = batch.rows.tolist()
        # CUDA: non_blocking copies from the pinned batch run on this (decode) stream
        per_size: dict[int, list[torch.Tensor]] = {s: [batch.images[s].to(device, non_blocking=True)] if rows else []
                                                   for s in sizes}
        failed = dict(zip(batch.failed_rows, batch.failed_reasons))
        for row, image, orientation in zip(batch.jpeg_rows, decoded, batch.jpeg_orientations):
            try:
                resized = (_resize_all(upright(image, orientation), sizes) if image is not None
                           else {s: t.to(device) for s, t in _pil_sizes(root / paths[row], sizes).items()})
            except Exception as err:  # noqa: BLE001 - as in ImageFiles
                failed[row] = f"{type(err).__name__}: {err}"
                continue
            rows.append(row)
            for size, tensor in resized.items():
                per_size[size].append(tensor[None])
        order = torch.tensor(sorted(range(len(rows)), key=rows.__getitem__), device=device)
        images = {s: torch.cat(parts)[order] for s, parts in per_size.items()} if rows else batch.images
    stream.hand_over(list(images.values()))
    return DecodedBatch(torch.tensor(sorted(rows), dtype=torch.int64), images, sorted(failed),
                        [failed[r] for r in sorted(failed)])


def _resize_all(image: torch.Tensor, sizes: Sequence[int]) -> dict[int, torch.Tensor]:
    with torch.autocast(image.device.type, enabled=False):  # resize pixels in fp32 even under --precision
        return {s: resize_square(image, s) for s in sizes}


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> uint8 (..., 3, size, size): bilinear, antialiased, as torchvision's resize.

    On a CPU torch resizes uint8 itself (a kernel made to match PIL's BILINEAR); elsewhere in float,
    rounded back. Written with F.interpolate alone, and no shortcut for an unchanged size, so that
    torch.export traces one graph for every input size (exported models resize with it too).
    """
    x = images.reshape(-1, *images.shape[-3:])  # (..., 3, H, W) -> (N, 3, H, W)
    if x.device.type == "cpu":
        out = F.interpolate(x, size=[size, size], mode="bilinear", align_corners=False, antialias=True)
    else:
        out = F.interpolate(x.float(), size=[size, size], mode="bilinear", align_corners=False, antialias=True)
        out = out.round_().to(torch.uint8)
    return out.reshape(*images.shape[:-2], size, size)


def _pil_sizes(path: Path, sizes: Sequence[int]) -> dict[int, torch.Tensor]:
    img = open_rgb(path)
    return {size: square_tensor(img, size) for size in sizes}


def _decode_one(data: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return None
