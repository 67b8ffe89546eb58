"""Image folders and files: listing, decoding (CPU Pillow; GPU nvJPEG in :mod:`.gpu`), bad files.

Public surface::

    list_images(paths) -> list[Path]
    list_units(paths, *, column=None) -> units     # folders, files, archives, brace patterns (units.py),
                                                  # TFRecord shards (tfrecord.py), s3:// gs:// https:// (remote.py)
    decode_image(path, *, mode="RGB", max_pixels=DEFAULT_MAX_PIXELS, resize=None,
                 center_crop=None) -> np.ndarray  # (H, W, C) uint8, or raises BadImage
    decode_bytes(data, ...) -> (array, decoder)   # the same for an image held in memory
    ImageFileDataset(files, **decode_opts)        # ds[i] -> DecodedImage, never raises
    iter_decoded(files, *, workers, batch_size, start=0, stop=None, **decode_opts)
    gpu.gpu_decode_available() / gpu.decode_files_gpu(...)   # import gpustats.sources.gpu
    synthetic.make_demo_folder / make_jpeg_corpus / make_tiny_folder
    samples.sample_stream(iterable, key)         # iterables of samples holding images (HF datasets)

:mod:`.gpu` and :mod:`.synthetic` are not imported here: import them explicitly. The dataset names
(:mod:`.dataset`, torch's DataLoader) load on first use: a CPU folder run never imports torch.
"""

from .decode import DEFAULT_MAX_PIXELS, decode_bytes, decode_image
from .errors import BadImage, NoImagesFoundError, SourceError, SourceNotFoundError
from .listing import IMAGE_EXTENSIONS, list_images
from .units import list_units

__all__ = [
    "BadImage",
    "DEFAULT_MAX_PIXELS",
    "DecodedImage",
    "IMAGE_EXTENSIONS",
    "ImageFileDataset",
    "NoImagesFoundError",
    "SourceError",
    "SourceNotFoundError",
    "decode_bytes",
    "decode_image",
    "iter_decoded",
    "list_images",
    "list_units",
]


def __getattr__(name: str):
    if name in ("DecodedImage", "ImageFileDataset", "iter_decoded"):
        from . import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
