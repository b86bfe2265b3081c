"""The digit classifier: a small CNN for 8x8 images (Keras 2 via tf-keras).

TensorFlow is imported on first use: only the training program and scoring call in here.
"""

from __future__ import annotations

import os
import weakref
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


#: Rows per call of the compiled scoring graph: large calls amortize TensorFlow's per-op
#: dispatch (on 2 cores 16k-row calls ran ~10% faster than 4k-row ones, 64k-row ones ~20%),
#: while a convolution's output stays ~130 MB (64k rows: 0.5 GB).
SCORING_CHUNK = 16_384

#: model -> its compiled scoring graph. The graph holds the model only weakly (no cycle), so a
#: model that is dropped takes its graph with it.
_SCORERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _scorer(model: keras.Model):
    """One `tf.function` per model, uint8 pixels in, probabilities out: no Keras `predict`
    machinery (a data adapter and a Python loop per call), no float copy of the input in numpy."""
    scorer = _SCORERS.get(model)
    if scorer is None:
        tf = _tensorflow()
        ref = weakref.ref(model)

        @tf.function(input_signature=[tf.TensorSpec([None, PIXELS], tf.uint8)])
        def scorer(pixels):
            x = tf.cast(pixels, tf.float32) / PIXEL_MAX  # exactly `to_features`
            return tf.nn.softmax(ref()(x, training=False))

        _SCORERS[model] = scorer
    return scorer


def predict_proba(model: keras.Model, pixels: np.ndarray, chunk: int = SCORING_CHUNK) -> np.ndarray:
    """Class probabilities (float32, rows x 10) of uint8 pixels in 0..16, from the compiled
    graph in large chunks."""
    pixels = np.ascontiguousarray(pixels, np.uint8).reshape(-1, PIXELS)
    scorer = _scorer(model)
    out = np.empty((len(pixels), 10), np.float32)
    for start in range(0, len(pixels), chunk):
        out[start : start + chunk] = scorer(pixels[start : start + chunk]).numpy()
    return out


def predict_classes(
    model: keras.Model, pixels: np.ndarray, chunk: int = SCORING_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """The most likely class (int64) and its probability (float64) per row: what scoring
    keeps, without materializing every class's probability as float64."""
    proba = predict_proba(model, pixels, chunk)
    classes = proba.argmax(axis=1)
    best = np.take_along_axis(proba, classes[:, None], axis=1)[:, 0].astype(np.float64)
    return classes.astype(np.int64, copy=False), best
