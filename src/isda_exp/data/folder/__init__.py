"""Image-folder data sets (ImageNet, or a user's `train/<class>/*`, `val/<class>/*`): the file
listing and the data source (source.py), the decoding of one file (decode.py, TorchCodec and
Pillow), the streams that decode in DataLoader workers (loader.py) or on the training device
(device_decode.py), and the crops (transforms.py)."""
from .decode import EXTENSIONS, Undecodable, decode_file
from .source import ImageFolderSource, list_classes, list_images, load_folder

__all__ = ["load_folder", "ImageFolderSource", "list_classes", "list_images", "EXTENSIONS",
           "decode_file", "Undecodable"]
