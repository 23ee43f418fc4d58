"""Image files as model inputs: folders, crop about the centre, resize."""
import numpy as np
from PIL import Image

from slot_jax.data.image_files import read_images


def test_files_of_any_size_are_cropped_about_the_centre_and_resized(tmp_path):
    wide = np.zeros((40, 80, 3), np.uint8)  # red | green (the centre 40 x 40) | blue
    wide[:, :20, 0], wide[:, 20:60, 1], wide[:, 60:, 2] = 255, 255, 255
    Image.fromarray(wide).save(tmp_path / "wide.png")
    Image.fromarray(wide.transpose(1, 0, 2)).save(tmp_path / "tall.jpg", quality=100)
    images = read_images([tmp_path], (35, 35))  # a directory: its images in name order
    assert images.shape == (2, 35, 35, 3) and images.dtype == np.uint8
    np.testing.assert_allclose(images.reshape(-1, 3).mean(axis=0), [0, 255, 0], atol=3)
