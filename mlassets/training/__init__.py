"""The training program: the only package that imports TensorFlow and Horovod.

It runs in its own processes (under horovodrun, locally or on Azure Batch), never inside the
Dagster code location.
"""
