"""Commands: Service Bus messages (retrain, score, Blob-created drops) turned into runs."""

import dagster as dg

from mlassets.defs.commands.sensors import servicebus_sensor

defs = dg.Definitions(sensors=[servicebus_sensor])
