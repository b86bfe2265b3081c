"""Inference: unlabelled samples scored by the model, exported to SQL."""

import dagster as dg

from mlassets.defs.inference.assets import inference_outputs, score_events

defs = dg.Definitions(assets=[inference_outputs], jobs=[score_events])
