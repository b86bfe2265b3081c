"""The digit classifier: a small CNN for 8x8 images (Keras 2 via tf-keras).

Imports TensorFlow: only the training program and scoring code load this module.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np
import tensorflow as tf

from mlassets.lib.events import PIXEL_MAX, PIXELS

keras = tf.keras  # tf-keras (Keras 2) because TF_USE_LEGACY_KERAS=1


def build_model(seed: int) -> keras.Model:
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
    return keras.models.load_model(path, compile=False)


def predict_proba(model: keras.Model, pixels: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Class probabilities, one batched call over all rows."""
    logits = model.predict(to_features(pixels), batch_size=batch_size, verbose=0)
    return tf.nn.softmax(logits).numpy()
