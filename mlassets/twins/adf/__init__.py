"""The embedded twin of Azure Data Factory: runs the pipelines of `adf/` on this machine.

It interprets the same JSON a factory runs, for the subset the platform uses, and reports
what ADF reports (run id, status, per-activity output with the Copy metrics), computed from
what it actually did.

**The subset.** Activities: ``Copy`` and ``IfCondition`` (with ``dependsOn`` on Succeeded /
Failed / Completed, and ``policy`` timeout and retry). Datasets: ``Parquet``, ``DelimitedText``
and ``Json`` on the lake (``AzureBlobFSLocation`` / ``AzureBlobStorageLocation``; the linked
service is the `LakeStorage` resource, a file's path is ``[fileSystem/]folderPath/fileName``
under the lake root) and ``AzureSqlTable`` / ``SqlServerTable`` (the SQLAlchemy URL the engine
is given). Copy: a table or ``sqlReaderQuery`` source, ``insert`` or ``upsert`` SQL sinks with
``preCopyScript`` and ``tableOption: autoCreate``; ``TabularTranslator`` mappings by name,
JSON path or ordinal, with interim types (String, Int16/32/64, Single, Double, Decimal,
Boolean, DateTime, DateTimeOffset, Guid, Byte[]) and ``mapComplexValuesToString``; fault
tolerance (``enableSkipIncompatibleRow``) with the session log (``logSettings``) written where
ADF writes it, in its format. Json sources are JSON lines (one object per line, read against
the dataset's schema when it declares one). An upsert stages the rows in a temporary table and
merges them set-based, like ADF's ``useTempDB``. Expressions: see `expressions`. Every property
outside this subset is rejected before anything runs, with an error naming the activity (or
dataset) and the property; performance hints (parallelCopies, dataIntegrationUnits, ...) are
accepted and ignored.

**Incompatible rows** are, as in ADF: a delimited-text row with the wrong number of columns, a
JSON line that is not an object or does not fit the dataset's schema, and a value that does not
convert to the mapped type. With ``enableSkipIncompatibleRow`` they are skipped and logged
(``TabularRowSkip``); without it the first one fails the activity.

**Data movement** is columnar: files are parsed by Arrow's readers (whole-file for text,
row group by row group for Parquet), conversions are compute kernels, and a value that fails
to convert is isolated by bisection, so only the bad rows ever take a per-row path. SQL rows
go through the DB-API in batches of ``writeBatchSize`` inside one transaction.

**The package**, by concern: `engine` (the `CopyEngine`: pipelines and activities),
`validation` (the subset and the `Validator`), `expressions` (ADF's expression language),
`datasets` (dataset types, text format options, lake files), `conversion` (interim types,
JSON text), `sources`, `translator` and `sinks` (the three stages of a Copy), `errors`, and
`factory` (`LocalDataFactory`, the resource that puts the engine behind the Data Factory role).
"""
