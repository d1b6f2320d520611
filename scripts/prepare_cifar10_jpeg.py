"""Turn the CIFAR-10 JPEG packs of the project's shared data into torchvision's CIFAR-10 layout.

    python scripts/prepare_cifar10_jpeg.py ../shared/data/cifar10 ./data [--per-class N]

writes ./data/cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta), so that
`--dataset cifar10 --data_folder ./data` reads the images as in-memory uint8 arrays (decoded once
here instead of every epoch). The files are not the published ones, so the loader warns that it
skips torchvision's md5 check. Needs numpy and Pillow only.
"""
import argparse
import io
import os
import pickle

import numpy as np
from PIL import Image


def decode(pack_path, limit=None):
    pack = np.load(pack_path)
    buf, offsets, labels = pack['jpeg'], pack['offsets'], pack['y']
    n = len(labels) if limit is None else min(len(labels), limit)
    images = np.empty((n, 32, 32, 3), dtype=np.uint8)
    for i in range(n):
        raw = buf[offsets[i]:offsets[i + 1]].tobytes()
        images[i] = np.asarray(Image.open(io.BytesIO(raw)).convert('RGB'))
    return images, [int(y) for y in labels[:n]], [str(c) for c in pack['classes']]


def write_batch(path, images, labels):
    entry = {'data': images.transpose(0, 3, 1, 2).reshape(len(images), -1), 'labels': labels}
    with open(path, 'wb') as f:
        pickle.dump(entry, f)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('packs', help='folder holding train_jpg.npz and test_jpg.npz')
    parser.add_argument('out', help='data folder to write cifar-10-batches-py/ into')
    parser.add_argument('--per-class', type=int, default=None, help='first N training images per class')
    args = parser.parse_args()
    target = os.path.join(args.out, 'cifar-10-batches-py')
    os.makedirs(target, exist_ok=True)
    # The packs are class-interleaved: a prefix of 10 * N images holds N per class.
    limit = None if args.per_class is None else 10 * args.per_class
    train, train_labels, classes = decode(os.path.join(args.packs, 'train_jpg.npz'), limit)
    test, test_labels, _ = decode(os.path.join(args.packs, 'test_jpg.npz'))
    for index, chunk in enumerate(np.array_split(np.arange(len(train)), 5), 1):
        write_batch(os.path.join(target, f'data_batch_{index}'), train[chunk], [train_labels[i] for i in chunk])
    write_batch(os.path.join(target, 'test_batch'), test, test_labels)
    with open(os.path.join(target, 'batches.meta'), 'wb') as f:
        pickle.dump({'label_names': classes, 'num_cases_per_batch': len(train) // 5, 'num_vis': 3072}, f)
    print(f'wrote {len(train)} training and {len(test)} test images to {target}')


if __name__ == '__main__':
    main()
