"""The digit classifier: a small CNN for 8x8 images (Keras 2 via tf-keras).

TensorFlow is imported on first use: only the training program and scoring call in here.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from mlassets.lib.events import PIXEL_MAX, PIXELS

if TYPE_CHECKING:
    from tensorflow import keras


def _tensorflow():
    """TensorFlow with tf-keras (Keras 2, which Horovod needs), imported on first use."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf

    return tf


def build_model(seed: int) -> keras.Model:
    keras = _tensorflow().keras
    init = keras.initializers.GlorotUniform(seed=seed)
    return keras.Sequential(
        [
            keras.layers.Input(shape=(PIXELS,)),
            keras.layers.Reshape((8, 8, 1)),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", kernel_initializer=init),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", kernel_initializer=init),
            keras.layers.MaxPooling2D(2),
            keras.layers.Dropout(0.25, seed=seed),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu", kernel_initializer=init),
            # Labels are noisy (people make mistakes): dropout keeps the model from
            # memorizing the wrong ones.
            keras.layers.Dropout(0.4, seed=seed),
            keras.layers.Dense(10, kernel_initializer=init),  # logits
        ],
        name="digit_classifier",
    )


def to_features(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels in 0..16 -> float32 in 0..1, the model's input."""
    return (np.asarray(pixels, np.float32) / PIXEL_MAX).reshape(-1, PIXELS)


def load_model(path: str) -> keras.Model:
    return _tensorflow().keras.models.load_model(path, compile=False)


def predict_proba(model: keras.Model, pixels: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Class probabilities, one batched call over all rows."""
    logits = model.predict(to_features(pixels), batch_size=batch_size, verbose=0)
    return _tensorflow().nn.softmax(logits).numpy()
