"""Dataset jobs: scan a folder, plan batches of same-shape images, run the codec stages as
tasks over zarr, and assemble one zarr store. Only ``graph`` imports Dask."""
