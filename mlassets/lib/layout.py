"""Where everything lives in the lakehouse, relative to MLASSETS_LAKE_URL.

One list, so the stages, the checks, the ADF pipelines' parameters and the docs agree.
"""

LANDED_PREFIX = "landed/events"  # partition=<p>/seq=<first>-<last>.parquet
QUARANTINE_PREFIX = "quarantine/events"  # same names as the landed files they belong to
CLAIMS_PREFIX = "landed/claims/events"  # partition=<p>/seq=<first>.json: who lands which range
INCOMING_PREFIX = "incoming"  # the drop zone (Event Grid BlobCreated -> import_incoming)
CDC_PREFIX = "cdc/labels"  # lsn=<from>-<to>.parquet
LABELS_PATH = "curated/labels"  # Delta Lake table
SNAPSHOT_PREFIX = "snapshots/labels"
DATASET_PREFIX = "datasets/digits"  # v=<content hash>/split=<split>/part-<k>.parquet
MODEL_PREFIX = "models/digit_classifier"  # <version>/model.keras, metrics.json
PREDICTIONS_PREFIX = "predictions"  # model=<version>/batch=<k>/part-<j>.parquet, claims/<k>.json
