"""Standard transforms (CIFAR-style for small images, ImageNet-style for large ones)."""

from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Images whose larger side is at most this many pixels get CIFAR-style transforms.
SMALL_IMAGE_MAX = 64


def fit_to_size(size):
    """Resize of the shorter side to ``size``, then CenterCrop(size): any image to size x size."""
    return T.Compose([T.Resize(size), T.CenterCrop(size)])


def small_image_transforms(mean, std, size=32, resize=False):
    """CIFAR-style ``(train, eval)`` transforms.

    train: RandomCrop(size, padding=size // 8) + RandomHorizontalFlip, eval: none;
    both end in ToTensor + Normalize. ``resize=True`` first brings every image to
    ``size x size`` (Resize of the shorter side + CenterCrop), for image folders
    whose images may not all share the detected size.
    """
    pre = [fit_to_size(size)] if resize else []
    post = [T.ToTensor(), T.Normalize(mean, std)]
    train = T.Compose(pre + [T.RandomCrop(size, padding=max(1, size // 8)),
                             T.RandomHorizontalFlip()] + post)
    test = T.Compose(pre + post)
    return train, test


def large_image_transforms(mean=IMAGENET_MEAN, std=IMAGENET_STD, size=224):
    """ImageNet-style ``(train, eval)`` transforms: RandomResizedCrop(224) + flip for
    training, Resize(256) + CenterCrop(224) for evaluation (scaled with ``size``)."""
    post = [T.ToTensor(), T.Normalize(mean, std)]
    train = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip()] + post)
    test = T.Compose([T.Resize(int(round(size * 256 / 224))), T.CenterCrop(size)] + post)
    return train, test
