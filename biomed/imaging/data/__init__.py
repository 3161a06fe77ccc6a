"""Chest X-ray datasets behind one contract.

- ``contract``: `Table` and `XrayDataset`, the base class of every dataset (labels, metadata,
  items, ``reports()``, ``subset``, ``with_split``).
- ``files``: `FileDataset`, the base of the real-data loaders (label spaces, views, resizing,
  the decode-once image cache of ``image_cache``); ``read``: one radiograph file to pixels;
  ``csv_tables``: the loaders' CSV label tables.
- One module per loader: ``mimic_cxr_jpg``, ``chexpert``, ``nih14``, ``openi``, ``padchest``,
  ``folder_csv`` (the ``data=`` config of the same name).
- ``splits``: each row's train / val / test, and `build_splits` (a ``data`` config -> three
  datasets); ``merge``: `MergeDataset`, several datasets as one.
"""
