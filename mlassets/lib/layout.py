"""Where everything lives in the lakehouse, relative to MLASSETS_LAKE_URL.

One list, so the stages, the checks, the ADF pipelines' parameters and the docs agree.
"""

# partition=<p>/seq=<first>-<last>.parquet (landed or merged by compaction; a file whose range
# lies inside another's is never read: lib/landing.live_files, landed_paths)
LANDED_PREFIX = "landed/events"
QUARANTINE_PREFIX = "quarantine/events"  # same names as the landed files they belong to
# partition=<p>/seq=<first>.json: who lands which range; partition=<p>/checkpoint=<last>.json:
# 0..last claimed and done (compaction removes the claims inside it)
CLAIMS_PREFIX = "landed/claims/events"
INCOMING_PREFIX = "incoming"  # the drop zone (Event Grid BlobCreated -> import_incoming)
CDC_PREFIX = "cdc/labels"  # lsn=<from>-<to>.parquet
LABELS_PATH = "curated/labels"  # Delta Lake table
SNAPSHOT_PREFIX = "snapshots/labels"
DATASET_PREFIX = "datasets/digits"  # v=<content hash>/split=<split>/part-<k>.parquet
MODEL_PREFIX = "models/digit_classifier"  # <version>/model.keras, metrics.json
PREDICTIONS_PREFIX = "predictions"  # model=<version>/batch=<k>/part-<j>.parquet, claims/<k>.json
