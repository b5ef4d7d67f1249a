"""Scoring at scale: image sources (folder, list file, glob), Parquet results written as partitions, and the same
job run in-process or on a Ray cluster (``ray_scoring``). Nothing here imports ray or torch until it is used."""
