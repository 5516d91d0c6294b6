"""ImageNet-style class folders: transforms, crop geometry, streaming with worker processes."""

from __future__ import annotations

import pytest
import torch

from biasdecay.data import (
    DataError,
    EvalTransform,
    ImageFolderDataset,
    TrainTransform,
    imagenet_loader,
)
from biasdecay.data.image_transforms import (
    center_crop_box,
    random_resized_crop_box,
    shorter_side_size,
    to_normalized_tensor,
)
from biasdecay.data.imagenet import IMAGENET_MEAN, IMAGENET_STD

Image = pytest.importorskip("PIL.Image")


def gradient_image(width: int, height: int, mode: str = "RGB"):
    x = torch.arange(width).view(1, width).expand(height, width)
    y = torch.arange(height).view(height, 1).expand(height, width)
    pixels = torch.stack([x % 256, y % 256, (x + y) % 256], dim=-1).to(torch.uint8)
    return Image.fromarray(pixels.numpy(), "RGB").convert(mode)


@pytest.fixture
def image_root(tmp_path):
    sizes = {"n01": [(40, 30), (25, 60)], "n02": [(64, 64), (33, 47)]}
    for split in ("train", "val"):
        for wnid, shapes in sizes.items():
            (tmp_path / split / wnid).mkdir(parents=True)
            for i, (w, h) in enumerate(shapes):
                image = gradient_image(w, h, "L" if i else "RGB")  # greyscale JPEGs exist
                image.save(tmp_path / split / wnid / f"img{i}.JPEG", format="JPEG")
            gradient_image(20, 20).save(tmp_path / split / wnid / "extra.png")
            (tmp_path / split / wnid / "notes.txt").write_text("not an image")
    return tmp_path


def test_folder_dataset_and_both_transforms(image_root):
    train = ImageFolderDataset(image_root, "train")
    val = ImageFolderDataset(image_root, "val")
    assert train.classes == ["n01", "n02"] and len(train) == 6 and train.num_classes == 2
    assert [label for _, label in train.samples] == [0, 0, 0, 1, 1, 1]
    assert not train.synthetic
    for dataset in (train, val):
        x, label = dataset[4]
        assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and label == 1
    assert isinstance(train.transform, TrainTransform)
    assert isinstance(val.transform, EvalTransform)


def test_streaming_loader_with_workers(image_root):
    loader = imagenet_loader(image_root, "train", batch_size=4, num_workers=2, seed=1)
    batches = list(loader)
    assert len(loader) == 1 and len(batches) == 1  # train drops the incomplete batch
    x, y = batches[0]
    assert x.shape == (4, 3, 224, 224) and y.dtype == torch.int64
    val = imagenet_loader(image_root, "val", batch_size=4, num_workers=2)
    labels = [y.tolist() for _, y in val]
    assert labels == [[0, 0, 0, 1], [1, 1]] and labels == [y.tolist() for _, y in val]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 0}, "batch_size must be positive, got 0"),
        ({"rank": 2, "world_size": 2}, "need 0 <= rank < world_size, got rank=2, world=2"),
        ({"dtype": torch.int64}, "dtype must be floating point, got torch.int64"),
    ],
)
def test_streaming_loader_refuses_what_the_device_loader_refuses(image_root, options, message):
    options = {"batch_size": 4, **options}
    with pytest.raises(ValueError, match=message):
        imagenet_loader(image_root, "train", num_workers=0, **options)


def test_random_resized_crop_geometry():
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        left, top, w, h = random_resized_crop_box(500, 400, generator=generator)
        assert 0 <= left and left + w <= 500 and 0 <= top and top + h <= 400
        assert 0.08 * 0.9 <= w * h / (500 * 400) <= 1.0
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1


def test_random_resized_crop_falls_back_to_centre():
    # a 1000 x 10 strip: no crop with area >= 8% and ratio <= 4/3 fits, so every try fails
    assert random_resized_crop_box(1000, 10, generator=torch.Generator()) == (493, 0, 13, 10)
    assert random_resized_crop_box(10, 1000, generator=torch.Generator()) == (0, 493, 10, 13)


def test_eval_resize_and_centre_crop():
    assert shorter_side_size(500, 375, 256) == (341, 256)
    assert shorter_side_size(300, 600, 256) == (256, 512)
    assert center_crop_box(300, 256, 224) == (38, 16, 224, 224)
    image = gradient_image(300, 256)  # shorter side already 256: the resize is the identity
    expected = to_normalized_tensor(image.crop((38, 16, 262, 240)), IMAGENET_MEAN, IMAGENET_STD)
    assert torch.allclose(EvalTransform(IMAGENET_MEAN, IMAGENET_STD)(image), expected)


def test_train_transform_is_seeded_and_normalised():
    image = gradient_image(80, 60)
    transform = TrainTransform(IMAGENET_MEAN, IMAGENET_STD, image_size=32)
    a = transform(image, torch.Generator().manual_seed(4))
    b = transform(image, torch.Generator().manual_seed(4))
    assert a.shape == (3, 32, 32) and torch.equal(a, b)
    low = (0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    high = (1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert low - 1e-5 <= a[0].min() and a[0].max() <= high + 1e-5
    # with the whole image as the crop, flipping always mirrors the never-flipped output
    never = TrainTransform(IMAGENET_MEAN, IMAGENET_STD, 16, (1, 1), (4 / 3, 4 / 3), 0.0)
    always = TrainTransform(IMAGENET_MEAN, IMAGENET_STD, 16, (1, 1), (4 / 3, 4 / 3), 1.0)
    assert torch.allclose(always(image).flip(-1), never(image))


def test_missing_and_corrupt_data(image_root, tmp_path_factory):
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(DataError, match=r"missing directory .*train.*--data-root"):
        ImageFolderDataset(empty, "train")
    corrupt = image_root / "val" / "n01" / "img0.JPEG"
    corrupt.write_bytes(b"garbage")
    dataset = ImageFolderDataset(image_root, "val")
    position = [path for path, _ in dataset.samples].index(corrupt)
    with pytest.raises(DataError, match="img0.JPEG: cannot decode"):
        dataset[position]
